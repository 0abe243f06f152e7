"""The only view `kfac_mem` has of a model: linear sites by id and a capturable forward pass.

`models.LanguageModel` (OLMo-2, Llama) and `models.VisionModel` (ViT) implement it. Curvature code
addresses layers only by `LinearSite.id` (HF module paths) and never reaches into modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax

from models.sites import LinearSite

Params = Any
Batch = Any


@runtime_checkable
class CurvatureModel(Protocol):
    config: Any
    params: Params
    mesh: Any
    rules: Any

    def linear_sites(self) -> Sequence[LinearSite]:
        """Every linear layer (kernel [d_in, d_out]) by HF module path, in forward order."""

    def hidden_states(
        self,
        params: Params,
        inputs: jax.Array,
        perturbations: Mapping[str, jax.Array] | None = None,
        capture: Sequence[str] = (),
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Final hidden states [B, S, d] and the inputs [B, S, d_in] of the `capture` sites.
        `perturbations[site]` [B, S, d_out] is added to that site's output."""

    def head_kernel(self, params: Params) -> jax.Array:
        """Output projection [d, V]: logits = hidden @ head_kernel (+ head_bias)."""

    def head_bias(self, params: Params) -> jax.Array | None:
        """Output bias [V] or None."""

    def loss_targets(self, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(model inputs, gold labels [B, S] int, position weights [B, S] in {0, 1}).

        Positions with weight 0 carry no loss and are excluded from the curvature factors (the last
        position of each window for a causal LM; every position but CLS for a classifier)."""

    def fingerprint(self) -> str:
        """A hash of the weights' content."""
