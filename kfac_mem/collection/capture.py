"""Per-position layer inputs a_t and output gradients g_t of selected linear sites.

g_t = ∂L/∂s_t with L = Σ_t w_t CE_t the *summed* cross-entropy over labelled positions (so g_t
carries gradient from later positions too). Only the selected sites' output perturbations are
differentiated: the backward pass starts at the head and stops at the lowest selected site, and no
parameter gradient is formed.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from kfac_mem.collection.head_loss import head_cotangent
from kfac_mem.collection.sites import input_groups
from kfac_mem.protocol import CurvatureModel
from models.sites import LinearSite


def inputs_and_output_grads(
    model: CurvatureModel,
    params,
    inputs: jax.Array,
    labels: jax.Array,  # [B, S]
    weights: jax.Array,  # [B, S] in {0, 1}
    sites: Sequence[LinearSite],
    mode: str,
    key: jax.Array | None,
    vocab_chunk: int = 8192,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], jax.Array]:
    """Returns ({input group: a [B, S, d_in]}, {site id: g [B, S, d_out]}, summed loss).

    Positions with weight 0 are not zeroed here; callers mask them.
    """
    groups = input_groups(sites)

    def forward(perturbations):
        return model.hidden_states(
            params, inputs, perturbations, capture=[s.id for s in groups.values()]
        )

    probe = jax.eval_shape(lambda: forward(None)[0])
    perturbations = {s.id: jnp.zeros((*probe.shape[:-1], s.d_out), probe.dtype) for s in sites}
    hidden, pullback, acts = jax.vjp(forward, perturbations, has_aux=True)
    dh, loss, _ = head_cotangent(
        hidden,
        model.head_kernel(params),
        model.head_bias(params),
        labels,
        weights,
        mode,
        key,
        vocab_chunk,
    )
    (grads,) = pullback(dh)
    return {g: acts[s.id] for g, s in groups.items()}, grads, loss
