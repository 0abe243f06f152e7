"""Stacked, sharded eigendecomposition of symmetric K-FAC factors (docs/design.md §2.5, §7.4).

Same-shape factors are stacked on a leading axis carrying the logical name `factor_stack`; the
stack is padded with identity matrices to a multiple of the number of devices that axis spans, and
`jax.vmap(jnp.linalg.eigh)` runs under `jax.jit` with the stack sharded in and out. Each device
solves its own whole matrices, so the compiled program holds no collective (no all-gather of any
matrix): `stacked_eigh_hlo` returns the compiled text that the tests inspect.

Convention: M = U diag(w) Uᵀ with w sorted **descending** and the columns of U the eigenvectors in
the same order. Inputs are symmetrized (½(M + Mᵀ)) and must be finite (`check_finite` names the
offending factors). float64 needs `jax_enable_x64`; `precision_scope("float64")` enables it only
inside its `with` block (it is refused on TPU, which has no float64 eigh).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from kfac_mem.errors import NonFiniteError
from models.axes import FACTOR_STACK
from models.partitioning import Rules, logical_to_spec

PRECISIONS = ("float32", "float64")


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[np.dtype]:
    """Yield the numpy dtype for `precision`, enabling x64 inside the block for float64.

    Args:
      precision: "float32" or "float64".

    Raises:
      ValueError: for any other name, or float64 on a TPU backend.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; use one of {PRECISIONS}.")
    if precision == "float32":
        yield np.dtype(np.float32)
        return
    if jax.default_backend() == "tpu":
        raise ValueError(
            "precision float64 is not available on TPU (no float64 eigh/matmul); "
            "use `precision` float32 there."
        )
    with jax.enable_x64(True):
        yield np.dtype(np.float64)


def symmetrize(m: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """½(M + Mᵀ) over the last two axes (works on numpy and jax arrays, any leading dims)."""
    return 0.5 * (m + m.swapaxes(-1, -2))


def check_finite(factors: Mapping[str, np.ndarray]) -> None:
    """Raise NonFiniteError (a ValueError too) naming every factor with a NaN or Inf entry.

    Args:
      factors: factor name (layer / input-group id) -> matrix.
    """
    bad = [name for name, m in factors.items() if not np.isfinite(np.asarray(m)).all()]
    if bad:
        raise NonFiniteFactorError(
            f"Non-finite (NaN/Inf) entries in factor(s) {bad}. The factor run is corrupt or "
            f"overflowed: recollect those layers (with `accumulate_dtype` float64 "
            f"if sums overflow). Nothing was written."
        )


class NonFiniteFactorError(NonFiniteError, ValueError):
    """Non-finite factor entries (a ValueError for callers that catch that)."""


def stack_shards(mesh: Mesh | None, rules: Rules | None) -> int:
    """How many devices the `factor_stack` axis is split over (1 without a mesh or rule)."""
    if mesh is None:
        return 1
    # A dimension of size mesh.size divides every mesh axis, so the spec lists every axis the rule
    # would use; an actual stack is padded to a multiple of their product.
    spec = logical_to_spec((FACTOR_STACK,), (mesh.size,), mesh, rules or ())[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))


def stack_sharding(mesh: Mesh, rules: Rules | None, shape: tuple[int, ...]) -> NamedSharding:
    """NamedSharding of a stacked array [k, ...] with the stack axis on `factor_stack`."""
    logical = (FACTOR_STACK,) + (None,) * (len(shape) - 1)
    return NamedSharding(mesh, logical_to_spec(logical, shape, mesh, rules or ()))


def padded_size(count: int, shards: int) -> int:
    """Smallest multiple of `shards` that is ≥ `count` (and ≥ `shards`)."""
    return max(shards, -(-count // shards) * shards)


def pad_stack(stack: np.ndarray, size: int) -> np.ndarray:
    """Append identity matrices to a stack [k, d, d] until it has `size` matrices."""
    k, d, _ = stack.shape
    if size == k:
        return stack
    eye = np.broadcast_to(np.eye(d, dtype=stack.dtype), (size - k, d, d))
    return np.concatenate([stack, eye], axis=0)


def _eigh_desc(stack: jax.Array) -> tuple[jax.Array, jax.Array]:
    w, v = jax.vmap(jnp.linalg.eigh)(symmetrize(stack))
    return w[..., ::-1], v[..., ::-1]


@functools.lru_cache(maxsize=64)
def _compiled(
    mesh: Mesh | None, rules: tuple | None, shape: tuple[int, int, int], dtype: str, x64: bool
):
    # `x64` is part of the key: the same shapes trace differently with float64 enabled.
    del x64
    if mesh is None:
        return jax.jit(_eigh_desc)
    sh3 = stack_sharding(mesh, rules, shape)
    sh2 = stack_sharding(mesh, rules, shape[:2])
    return jax.jit(_eigh_desc, in_shardings=sh3, out_shardings=(sh2, sh3))


def _eigh_fn(mesh: Mesh | None, rules: Rules | None, shape: tuple[int, int, int], dtype):
    frozen = (
        None
        if rules is None
        else tuple((n, a if a is None or isinstance(a, str) else tuple(a)) for n, a in rules)
    )
    return _compiled(
        mesh, frozen, tuple(shape), str(np.dtype(dtype)), bool(jax.config.jax_enable_x64)
    )


def stacked_eigh(
    stack: np.ndarray, mesh: Mesh | None = None, rules: Rules | None = None
) -> tuple[jax.Array, jax.Array]:
    """Eigendecompose a stack of symmetric matrices, sharded on `factor_stack`.

    Args:
      stack: [k, d, d] host array in the working precision (float32, or float64 inside
        `precision_scope("float64")`). Symmetrized here; the caller checks finiteness.
      mesh, rules: placement; without a mesh the stack runs on the default device.

    Returns:
      (w, U): eigenvalues [k_pad, d] descending and eigenvectors [k_pad, d, d] (columns), both
      sharded on the stack axis. k_pad = `padded_size(k, stack_shards(mesh, rules))`; rows k and
      beyond are the identity padding (eigenvalues 1) and must be ignored.
    """
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        raise ValueError(f"`stack` must be [k, d, d] (square matrices), got shape {stack.shape}.")
    size = padded_size(stack.shape[0], stack_shards(mesh, rules))
    padded = pad_stack(stack, size)
    fn = _eigh_fn(mesh, rules, padded.shape, padded.dtype)
    x = (
        padded
        if mesh is None
        else jax.device_put(padded, stack_sharding(mesh, rules, padded.shape))
    )
    return fn(x)


def stacked_eigh_hlo(
    mesh: Mesh, rules: Rules | None, k: int, d: int, dtype: str | np.dtype = "float32"
) -> str:
    """The compiled (post-SPMD-partitioning) HLO text of `stacked_eigh` for a [k, d, d] stack."""
    size = padded_size(k, stack_shards(mesh, rules))
    shape = (size, d, d)
    fn = _eigh_fn(mesh, rules, shape, dtype)
    spec = jax.ShapeDtypeStruct(shape, np.dtype(dtype), sharding=stack_sharding(mesh, rules, shape))
    return fn.lower(spec).compile().as_text()


def local_rows(x: jax.Array, count: int) -> np.ndarray:
    """Host copy of rows [0, count) of a stacked array (drops the identity padding).

    Reads each device's shard separately (device-to-host copies, never a device all-gather).
    Single-process only; multi-host callers save the sharded arrays with Orbax instead.
    """
    out = np.empty((count, *x.shape[1:]), x.dtype)
    for shard in x.addressable_shards:
        rows = shard.index[0]
        start, stop = rows.start or 0, x.shape[0] if rows.stop is None else rows.stop
        lo, hi = start, min(stop, count)
        if lo < hi:
            out[lo:hi] = np.asarray(shard.data)[: hi - lo]
    return out


__all__ = [
    "PRECISIONS",
    "check_finite",
    "local_rows",
    "pad_stack",
    "padded_size",
    "precision_scope",
    "stack_sharding",
    "stack_shards",
    "stacked_eigh",
    "stacked_eigh_hlo",
    "symmetrize",
]
