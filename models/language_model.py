"""`LanguageModel`: a decoder config, its parameters, tokenizer and placement, plus jitted entry points.

This is the object `models.load_pretrained` returns and the view `kfac_mem` has of a language model
(`kfac_mem.protocol.CurvatureModel`): linear sites by HF path, a forward pass that can capture each
site's input and accept an additive perturbation of its output, and the output head.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from models.config import DecoderConfig
from models.decoder import Decoder, head_kernel
from models.layers import CAPTURE
from models.partitioning import (
    Rules,
    abstract_module_params,
    activation_sharding,
    init_module_params,
    tree_shardings,
)
from models.sites import LinearSite, captured_inputs, decoder_sites, perturbation_tree

Params = dict[str, Any]


def _example_tokens() -> jax.Array:
    return jnp.zeros((1, 1), jnp.int32)


def abstract_params(config: DecoderConfig) -> tuple[Params, Params]:
    """(ShapeDtypeStruct tree, logical-axes tree) of a decoder's parameters, without allocating."""
    return abstract_module_params(Decoder(config), _example_tokens())


def param_shardings(config: DecoderConfig, mesh: Mesh | None, rules: Rules | None) -> Params | None:
    """NamedSharding per parameter under `rules`, or None when no mesh is given."""
    if mesh is None:
        return None
    shapes, logical = abstract_params(config)
    return tree_shardings(logical, shapes, mesh, rules)


def init_params(
    config: DecoderConfig, seed: int = 0, mesh: Mesh | None = None, rules: Rules | None = None
) -> Params:
    """Random parameters (normal(0.02) kernels, unit norms), created directly in their shardings."""
    shardings = param_shardings(config, mesh, rules)
    return init_module_params(Decoder(config), (_example_tokens(),), seed, shardings)


def fingerprint(params: Params, sample: int = 1 << 16) -> str:
    """A weight-content hash (not a name hash): sha256 over every leaf's path, shape, dtype and a
    strided sample of up to `sample` of its values. Independent of sharding and device count."""
    h = hashlib.sha256()
    for path, leaf in sorted(
        jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])
    ):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str((leaf.shape, str(leaf.dtype))).encode())
        stride = max(1, leaf.size // sample)
        mesh = getattr(leaf.sharding, "mesh", None)
        values = np.asarray(_strided(leaf, stride, mesh).addressable_data(0))
        h.update(values.astype(np.float32).tobytes())
    return h.hexdigest()[:16]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _strided(x, stride, mesh):
    """Every `stride`-th value of x, replicated (readable from any process)."""
    y = x.reshape(-1)[::stride]
    if mesh is None:
        return y
    return jax.lax.with_sharding_constraint(
        y, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )


def freeze_rules(rules: Rules | None) -> tuple | None:
    """A hashable copy of a rule table."""
    if rules is None:
        return None
    return tuple(
        (name, axes if axes is None or isinstance(axes, str) else tuple(axes))
        for name, axes in rules
    )


class PlacedModel:
    """What every model wrapper (a dataclass with `config`, `params`, `mesh`, `rules` and a
    `module` property) shares: hashable placement, parameter swaps and a sharded `apply`.

    Equality and hash cover what shapes the computation (type, config and placement), not the
    weights, so jitted functions taking the model as a static argument are shared across edits.
    """

    def __post_init__(self):
        self.rules = freeze_rules(self.rules)

    def _static_key(self):
        return (type(self), self.config, self.mesh, self.rules)

    def __hash__(self) -> int:
        return hash(self._static_key())

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacedModel) and self._static_key() == other._static_key()

    def with_params(self, params: Params):
        return dataclasses.replace(self, params=params)

    def apply(self, params: Params, inputs: jax.Array, **kwargs):
        """Traceable forward of `self.module` under this model's activation sharding."""
        with activation_sharding(self.mesh, self.rules):
            return self.module.apply({"params": params}, inputs, **kwargs)


@dataclasses.dataclass(eq=False)
class LanguageModel(PlacedModel):
    """A causal LM ready to run on `mesh` (or on the default device when `mesh` is None).

    Attributes:
      config: the decoder configuration.
      params: parameter tree mirroring HF module paths (kernels [d_in, d_out]).
      tokenizer: a `tokenizers.Tokenizer`, when the source had one.
      mesh, rules: placement of parameters and activations (logical-axis rule table).
      source: where the weights came from (path or preset), for provenance.
    """

    config: DecoderConfig
    params: Params
    tokenizer: Any = None
    mesh: Mesh | None = None
    rules: Rules | None = None
    source: str = ""

    @functools.cached_property
    def module(self) -> Decoder:
        return Decoder(self.config)

    # --- plain forward (`apply`: see `Decoder.__call__`) --------------------------------------

    @functools.cached_property
    def _logits_fn(self):
        def f(params, tokens, mask):
            positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
            return self.apply(params, tokens, positions=positions, k_valid=mask.astype(bool))[0]

        return jax.jit(f)

    def logits(self, token_ids, attention_mask=None) -> jax.Array:
        """int [B, S] -> float [B, S, V]. `attention_mask` [B, S] (1 = real token) supports left
        padding: positions count only real tokens and padded keys are masked out."""
        token_ids = jnp.asarray(token_ids, jnp.int32)
        if token_ids.ndim != 2:
            raise ValueError(f"`token_ids` must be [batch, seq], got shape {token_ids.shape}.")
        mask = (
            jnp.ones_like(token_ids)
            if attention_mask is None
            else jnp.asarray(attention_mask, jnp.int32)
        )
        return self._logits_fn(self.params, token_ids, mask)

    # --- curvature protocol -------------------------------------------------------------------

    def linear_sites(self) -> list[LinearSite]:
        return decoder_sites(self.config)

    def head_kernel(self, params: Params) -> jax.Array:
        """Output projection [d, V] applied to `hidden_states` to give logits."""
        return head_kernel(self.config, params)

    def hidden_states(
        self,
        params: Params,
        tokens: jax.Array,  # [B, S]
        perturbations: Mapping[str, jax.Array] | None = None,  # {site id: [B, S, d_out]}
        capture: Sequence[str] = (),
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Final-norm hidden states [B, S, d] and the inputs [B, S, d_in] of the `capture` sites.

        A perturbation is added to its site's output, so ∂(loss)/∂perturbation = ∂(loss)/∂output.
        Only perturbed sites enter the backward pass: nothing below the lowest one is differentiated.
        """
        variables = {"params": params}
        if perturbations:
            variables.update(perturbation_tree(perturbations))
        with activation_sharding(self.mesh, self.rules):
            (hidden, _), state = self.module.apply(
                variables, tokens, return_hidden=True, mutable=[CAPTURE] if capture else []
            )
        return hidden, (captured_inputs(state, capture) if capture else {})

    def head_bias(self, params: Params) -> None:
        return None

    def loss_targets(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(inputs, next-token labels [B, S], weights [B, S]): every position but the last of each
        window predicts the following token; the last has weight 0 (no label)."""
        tokens = jnp.asarray(tokens, jnp.int32)
        labels = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
        weights = jnp.ones(tokens.shape, jnp.float32).at[:, -1].set(0.0)
        return tokens, labels, weights

    def fingerprint(self) -> str:
        return fingerprint(self.params)
