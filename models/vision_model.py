"""`VisionModel`: a ViT config, its parameters and placement, plus jitted entry points.

It implements the curvature protocol `kfac_mem.protocol.CurvatureModel` for classifiers: linear
sites by HF checkpoint path, a forward pass that captures site inputs and accepts output
perturbations, the classifier head (kernel [d, classes] and bias), and `loss_targets` that puts the
image's label at the CLS position (position 0) with weight 1 and weight 0 everywhere else, so
curvature statistics are collected at the CLS position only (the paper's ViT setting).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from models.language_model import PlacedModel, fingerprint
from models.layers import CAPTURE
from models.partitioning import (
    Rules,
    abstract_module_params,
    activation_sharding,
    init_module_params,
    tree_shardings,
)
from models.presets import get_vit_config
from models.sites import LinearSite, captured_inputs, perturbation_tree
from models.vit import ViTClassifier
from models.vit_config import ViTConfig

Params = dict[str, Any]
PREFIX = "vit.encoder.layer"
# projection -> (module path inside a block, input group inside a block)
VIT_SITES = {
    "q": ("attention.attention.query", "attention.attention.query+key+value.input"),
    "k": ("attention.attention.key", "attention.attention.query+key+value.input"),
    "v": ("attention.attention.value", "attention.attention.query+key+value.input"),
    "o": ("attention.output.dense", "attention.output.dense.input"),
    "fc1": ("intermediate.dense", "intermediate.dense.input"),
    "fc2": ("output.dense", "output.dense.input"),
}


def vit_sites(config: ViTConfig) -> list[LinearSite]:
    """All linear sites of the blocks (patch projection and classifier excluded), forward order.

    Ids are HF checkpoint paths, e.g. `vit.encoder.layer.0.intermediate.dense` (fc1); q/k/v share
    one input group (they read the same normed residual stream).
    """
    d, f = config.hidden_size, config.intermediate_size
    dims = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc1": (d, f), "fc2": (f, d)}
    out = []
    for i in range(config.num_layers):
        for proj, (module, group) in VIT_SITES.items():
            out.append(
                LinearSite(
                    f"{PREFIX}.{i}.{module}",
                    i,
                    proj,
                    *dims[proj],
                    input_group=f"{PREFIX}.{i}.{group}",
                )
            )
    return out


def _dummy_images(config: ViTConfig) -> jax.Array:
    return jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)


def abstract_params(config: ViTConfig) -> tuple[Params, Params]:
    """(ShapeDtypeStruct tree, logical-axes tree) of a ViT's parameters, without allocating."""
    return abstract_module_params(ViTClassifier(config), _dummy_images(config))


def param_shardings(config: ViTConfig, mesh: Mesh | None, rules: Rules | None) -> Params | None:
    """NamedSharding per parameter under `rules`, or None when no mesh is given."""
    if mesh is None:
        return None
    shapes, logical = abstract_params(config)
    return tree_shardings(logical, shapes, mesh, rules)


def init_vit_params(
    config: ViTConfig, seed: int = 0, mesh: Mesh | None = None, rules: Rules | None = None
) -> Params:
    """Random parameters (normal(0.02) kernels, zero biases, unit norms) in their shardings."""
    shardings = param_shardings(config, mesh, rules)
    return init_module_params(ViTClassifier(config), (_dummy_images(config),), seed, shardings)


@dataclasses.dataclass(eq=False)
class VisionModel(PlacedModel):
    """A ViT classifier ready to run on `mesh` (or the default device when `mesh` is None).

    Attributes:
      config: the ViT configuration.
      params: parameter tree mirroring HF checkpoint paths (kernels [d_in, d_out]).
      mesh, rules: placement of parameters and activations (logical-axis rule table).
      source: where the weights came from (path or preset), for provenance.
    """

    config: ViTConfig
    params: Params
    mesh: Mesh | None = None
    rules: Rules | None = None
    source: str = ""

    @functools.cached_property
    def module(self) -> ViTClassifier:
        return ViTClassifier(self.config)

    @functools.cached_property
    def _logits_fn(self):
        return jax.jit(lambda params, images: self.apply(params, images))

    def logits(self, images) -> jax.Array:
        """float [B, H, W, C] (or [B, H, W] grey) -> logits [B, classes] (float32 compute)."""
        return self._logits_fn(self.params, jnp.asarray(images, jnp.float32))

    # --- curvature protocol -------------------------------------------------------------------

    def linear_sites(self) -> list[LinearSite]:
        return vit_sites(self.config)

    def hidden_states(
        self,
        params: Params,
        images: jax.Array,  # [B, H, W, C]
        perturbations: Mapping[str, jax.Array] | None = None,  # {site id: [B, S, d_out]}
        capture: Sequence[str] = (),
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Final-LayerNorm hidden states [B, S, d] (S = patches + 1, CLS first) and the inputs
        [B, S, d_in] of the `capture` sites; a perturbation is added to its site's output."""
        variables = {"params": params}
        if perturbations:
            variables.update(perturbation_tree(perturbations))
        with activation_sharding(self.mesh, self.rules):
            hidden, state = self.module.apply(
                variables, images, return_hidden=True, mutable=[CAPTURE] if capture else []
            )
        return hidden, (captured_inputs(state, capture) if capture else {})

    def head_kernel(self, params: Params) -> jax.Array:
        """Classifier kernel [d, classes]: logits = hidden[:, 0] @ kernel + bias."""
        return params["classifier"]["kernel"]

    def head_bias(self, params: Params) -> jax.Array:
        """Classifier bias [classes]."""
        return params["classifier"]["bias"]

    def loss_targets(self, batch: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`batch` = (images [B, H, W, C], labels [B]) or {"images": ..., "labels": ...} ->
        (images, labels [B, S] (the label at CLS, 0 elsewhere), weights [B, S] (1 at CLS only))."""
        if isinstance(batch, Mapping):
            missing = {"images", "labels"} - set(batch)
            if missing:
                raise ValueError(
                    f"`batch` mapping lacks {sorted(missing)}; give images and labels."
                )
            images, labels = batch["images"], batch["labels"]
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            images, labels = batch
        else:
            raise ValueError(
                "`batch` for a ViT must be (images [B, H, W, C], labels [B]) or a mapping with "
                f"'images' and 'labels'; got {type(batch).__name__}."
            )
        images = jnp.asarray(images, jnp.float32)
        labels = jnp.asarray(labels, jnp.int32)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"`labels` must be [batch] = [{images.shape[0]}] class ids, got {labels.shape}."
            )
        s = self.config.seq_len
        full = jnp.zeros((labels.shape[0], s), jnp.int32).at[:, 0].set(labels)
        weights = jnp.zeros((labels.shape[0], s), jnp.float32).at[:, 0].set(1.0)
        return images, full, weights

    def fingerprint(self) -> str:
        return fingerprint(self.params)


def init_vision_model(
    preset_or_config: str | ViTConfig,
    seed: int = 0,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    **overrides: Any,
) -> VisionModel:
    """A randomly initialized `VisionModel` from a ViT preset name (`models.presets.PRESETS`) or a
    `ViTConfig`; `overrides` replace config fields (e.g. hidden_size=128)."""
    if isinstance(preset_or_config, str):
        config, source = get_vit_config(preset_or_config), f"preset:{preset_or_config}:seed{seed}"
    else:
        config, source = preset_or_config, f"config:seed{seed}"
    config = config.replace(**overrides) if overrides else config
    return VisionModel(config, init_vit_params(config, seed, mesh, rules), mesh, rules, source)
