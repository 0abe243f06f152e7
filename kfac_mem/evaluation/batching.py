"""Batch placement for evaluation forwards: fixed-size batches, bucketed lengths, data sharding.

Every evaluation forward runs on batches of a fixed row count (padded with dummy rows) whose
sequence length is rounded up to a bucket, so a whole evaluation compiles a handful of shapes. Rows
are split over the mesh's data axes (`kfac_mem.sharding.data_axes`); parameters keep their own
sharding.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from kfac_mem.sharding import data_axes


def length_bucket(n: int, minimum: int = 16) -> int:
    """Smallest bucket ≥ n from {minimum·2^k, 1.5·minimum·2^k}: at most ~33% padding, few shapes."""
    if n < 1:
        raise ValueError(f"Sequence length must be >= 1, got {n}.")
    size = minimum
    while True:
        if n <= size:
            return size
        if n <= size * 3 // 2:
            return size * 3 // 2
        size *= 2


def data_parallel_size(model) -> int:
    """Number of shards the batch dimension is split into on `model.mesh` (1 without a mesh)."""
    if model.mesh is None:
        return 1
    axes = data_axes(model.mesh, model.rules or ())
    return int(math.prod(model.mesh.shape[a] for a in axes))


def round_batch(batch_size: int, model, n_rows: int | None = None) -> int:
    """Rows per batch: `batch_size` (or `n_rows` when fewer rows exist, so a small job is not
    padded to a full batch) rounded up to a multiple of the data-parallel size."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    rows = batch_size if n_rows is None else max(1, min(batch_size, n_rows))
    dp = data_parallel_size(model)
    return -(-rows // dp) * dp


def place_batch(model, array: np.ndarray) -> jax.Array:
    """Put a host array [B, ...] on the model's mesh with rows split over the data axes."""
    if model.mesh is None:
        return jax.numpy.asarray(array)
    axes = data_axes(model.mesh, model.rules or ())
    spec = PartitionSpec(axes if axes else None, *([None] * (array.ndim - 1)))
    return jax.device_put(array, NamedSharding(model.mesh, spec))


def pad_rows(array: np.ndarray, rows: int, fill: int | float = 0) -> np.ndarray:
    """`array` [n, ...] padded with `fill` rows to [rows, ...] (n <= rows)."""
    if array.shape[0] > rows:
        raise ValueError(f"Cannot pad {array.shape[0]} rows down to {rows}.")
    if array.shape[0] == rows:
        return array
    pad = np.full((rows - array.shape[0], *array.shape[1:]), fill, array.dtype)
    return np.concatenate([array, pad], axis=0)
