"""Global batches for the collection step (docs/design.md §7.3, §7.5).

The last batch is padded with zero-weight rows up to the batch size (and every batch up to a
multiple of n_data), so every window counts and any batch size runs on any device count.
Multi-host: every process builds the global batch from only the rows its own devices hold
(`jax.make_array_from_callback`), so each process reads its own part of the stream and the result
equals a single-process run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from kfac_mem.data import LabelledExamples, Windows
from kfac_mem.sharding import logical_to_sharding
from models import axes


def batch_array(
    windows: np.ndarray,
    start: int,
    batch_size: int,
    sharding,
    dtype=np.int32,
    n_valid: int | None = None,
) -> jax.Array:
    """Global [batch_size, ...] batch of windows[start:start+n_valid] (token windows [n, L] or any
    per-item array, e.g. images [n, H, W, C] or labels [n]) in `dtype`, padded with zero rows up to
    `batch_size` (`n_valid` defaults to `batch_size`); each process reads only the rows its
    addressable devices hold."""
    shape = (batch_size, *windows.shape[1:])
    end = start + (batch_size if n_valid is None else n_valid)

    def rows(index):
        r = index[0]
        lo = start + (r.start or 0)
        hi = start + (batch_size if r.stop is None else r.stop)
        out = np.zeros((hi - lo, *windows.shape[1:]), dtype)
        if lo < end:
            out[: min(hi, end) - lo] = windows[lo : min(hi, end)]
        return out[(slice(None), *index[1:])]

    return jax.make_array_from_callback(shape, sharding, rows)


def batch_shardings(data: Windows | LabelledExamples, batch_size: int, mesh, rules) -> list:
    """One sharding per array of the data source: the leading (batch) axis over the data axes."""
    return [
        logical_to_sharding(
            (axes.ACT_BATCH,) + (None,) * (a.ndim - 1), (batch_size, *a.shape[1:]), mesh, rules
        )
        for a in data.arrays
    ]


def global_batch(
    data: Windows | LabelledExamples,
    start: int,
    batch_size: int,
    shardings: Sequence,
    n_valid: int | None = None,
) -> Any:
    """The model's batch for items [start, start + n_valid) of `data`, zero-padded to
    `batch_size` rows and sharded over the mesh (integer arrays as int32, the rest as float32)."""
    arrays = [
        batch_array(
            a,
            start,
            batch_size,
            sh,
            np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32,
            n_valid,
        )
        for a, sh in zip(data.arrays, shardings, strict=True)
    ]
    return data.as_batch(arrays)


def step_batch_size(batch_size: int, n_data: int) -> int:
    """Rows of the compiled step: `batch_size` rounded up to a multiple of the data shards."""
    return -(-batch_size // n_data) * n_data
