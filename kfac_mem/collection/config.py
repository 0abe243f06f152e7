"""`CollectConfig`: what a collection run does, validated on construction."""

from __future__ import annotations

import dataclasses

from kfac_mem.collection.head_loss import MODES

ACCUMULATE_DTYPES = ("float32", "float64")


# When per-device sums reach the row-sharded totals (module docstring): "auto" picks the fastest
# that fits; "checkpoint" (per-shard full partials, no per-step communication) is faster than
# "step" (row-sharded totals updated every step, nothing full-size per device).
REDUCE_MODES = ("auto", "checkpoint", "step")


# How "step" forms a site's row-sharded update: "gather" (all-gather activations, own row block),
# "scatter" (full local outer product, reduce-scatter), "auto" (per site by size).
STEP_SCHEMES = ("auto", "gather", "scatter")


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    mode: str = "sampled"
    seed: int = 0
    batch_size: int = 8
    accumulate_dtype: str = "float32"
    vocab_chunk: int = 8192
    save_every: int = 100  # batches between checkpoints (and always at the end)
    reduce: str = "auto"  # "auto" | "checkpoint" | "step" (module docstring)
    scheme: str = "auto"  # under reduce="step": "auto" | "gather" | "scatter" (per site)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}.")
        if self.accumulate_dtype not in ACCUMULATE_DTYPES:
            raise ValueError(f"`accumulate_dtype` must be one of {ACCUMULATE_DTYPES}.")
        if self.reduce not in REDUCE_MODES:
            raise ValueError(f"`reduce` must be one of {REDUCE_MODES}, got {self.reduce!r}.")
        if self.scheme not in STEP_SCHEMES:
            raise ValueError(f"`scheme` must be one of {STEP_SCHEMES}, got {self.scheme!r}.")
        for name in ("batch_size", "save_every", "vocab_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
