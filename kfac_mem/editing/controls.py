"""Controls the paper compares the curvature edit with: SVD truncation and random bases.

`svd_truncate` drops the bottom fraction of singular components of W (the paper's 7B SVD
baseline drops 0.5% on up/down and 50% on gate of layer 21). `random_orthogonal` draws Haar
orthogonal matrices; the random-basis control keeps exactly the K-FAC (or band) selection's kept
set, but in random bases, so it removes as many components as the curvature edit does.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("keep",))
def _svd_keep(w, *, keep: int):
    u, s, vt = jnp.linalg.svd(w, full_matrices=False)
    energy = jnp.sum(s[:keep] ** 2) / jnp.sum(s**2)
    return jnp.matmul(
        u[:, :keep] * s[:keep], vt[:keep], precision=jax.lax.Precision.HIGHEST
    ), energy


def svd_truncate(w: np.ndarray, drop: float, dtype: np.dtype) -> tuple[np.ndarray, int, float]:
    """Drop the bottom `drop` fraction of W's singular components.

    Args:
      w: W [d_out, d_in]. drop: fraction in [0, 1) of the min(d_out, d_in) components removed
        (rounded to the nearest count). dtype: working dtype.

    Returns:
      (W' [d_out, d_in] in `dtype`, kept components k, kept energy Σ_{<k} σ² / Σ σ²).
    """
    r = min(w.shape)
    keep = r - round(drop * r)
    if keep <= 0:
        raise ValueError(f"Dropping {drop:.4g} of {r} singular components leaves none; use < 1.")
    out, energy = _svd_keep(jnp.asarray(w, dtype), keep=keep)
    return np.asarray(out), keep, float(energy)


def site_key(seed: int, site_id: str) -> jax.Array:
    """A PRNG key per (seed, layer id), stable across runs and processes."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(site_id.encode()) & 0x7FFFFFFF)


@functools.partial(jax.jit, static_argnames=("d", "dtype"))
def _haar(key, *, d: int, dtype):
    q, r = jnp.linalg.qr(jax.random.normal(key, (d, d), dtype))
    return q * jnp.sign(jnp.diagonal(r))[None, :]


def random_orthogonal(key: jax.Array, d: int, dtype: np.dtype) -> np.ndarray:
    """A Haar-distributed orthogonal [d, d] matrix (QR of a Gaussian, signs fixed by diag R)."""
    return np.asarray(_haar(key, d=d, dtype=jnp.dtype(dtype)))
