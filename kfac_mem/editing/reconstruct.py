"""W' = U_G ((U_Gᵀ W U_A) ⊙ M) U_Aᵀ for a kept set M, without forming the dense product when M is
a staircase (docs/design.md §2.6).

Entry C_ij = u_G,iᵀ W u_A,j needs either the row projection u_G,iᵀ W or the column projection
W u_A,j (d_out·d_in flops each); for a staircase (row i keeps columns [0, c_i), c non-increasing)
the cheapest cover is "the top s rows" plus "the first c_s columns". So the staircase is split at
a row s into two arms:
  rows [0, s)  rows first:    P = U_G[:, :s]ᵀ W, then per row block C_b = P_b U_A[:, :K_b]
  rows [s, r)  columns first: Q = W U_A[:, :c_s], then per row block C_b = U_G[:, b]ᵀ Q[:, :K_b]
Up to MAX_BLOCKS row blocks per arm (split where they save the most flops) make the small
products cost closer to the staircase's area than to its bounding box. The split minimizing the
estimated flops, 4·d_out·d_in·(s + c_s) + 4·(d_in·area_1 + d_out·area_2)·1.2, is chosen from the
counts alone; the kept set's complement (again a staircase, in reversed order) is used instead
when cheaper, via P(M) = W − P(not M) (U_G, U_A orthogonal). Spectra that decay fast give thin
staircases and cost a few percent of the dense 4·d_out·d_in·(d_out + d_in).

All products run in the working dtype (float32, or float64 inside `precision_scope`) at
`Precision.HIGHEST` (no TF32/bf16 passes on accelerators).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from kfac_mem.editing.selection import Selection

HIGHEST = jax.lax.Precision.HIGHEST
MAX_BLOCKS = 4  # row blocks per arm (each is a separately compiled small product)
MIN_BLOCK_SAVING = 2e9  # flops a further block must save
BLOCK_OVERHEAD = 1.3  # estimated blocked flops / exact staircase area


def _mm(a, b):
    return jnp.matmul(a, b, precision=HIGHEST)


def arm_costs(counts: np.ndarray, n: int) -> np.ndarray:
    """Estimated matmul flops of the two-arm product for every split s in [0, r] (r = rows with
    c > 0), for a staircase with row counts `counts` [m] over n columns."""
    m = len(counts)
    r = int((counts > 0).sum())
    s = np.arange(r + 1, dtype=np.float64)
    cs = np.concatenate([counts[:r], [0]]).astype(np.float64)
    area_1 = np.concatenate([[0.0], np.cumsum(counts[:r], dtype=np.float64)])
    area_2 = area_1[-1] - area_1
    return 4.0 * m * n * (s + cs) + 4.0 * BLOCK_OVERHEAD * (n * area_1 + m * area_2)


def row_blocks(
    counts: np.ndarray, start: int, stop: int, other: int
) -> tuple[tuple[int, int, int], ...]:
    """Split rows [start, stop) into ≤ MAX_BLOCKS blocks (lo, hi, K = counts[lo]).

    Greedy: repeatedly split the block at the row that saves the most flops,
    4·other·(hi − t)·(counts[lo] − counts[t]), while that saving exceeds MIN_BLOCK_SAVING (each
    block is another small matmul to compile and run). `other` is the dimension the block's
    products run over (d_in for the rows-first arm, d_out for the columns-first arm).
    """
    if stop <= start:
        return ()
    cuts = [start, stop]
    while len(cuts) - 1 < MAX_BLOCKS:
        best = (MIN_BLOCK_SAVING, None)
        for lo, hi in itertools.pairwise(cuts):
            if hi - lo < 2:
                continue
            t = np.arange(lo + 1, hi)
            saving = 4.0 * other * (hi - t) * (counts[lo] - counts[lo + 1 : hi])
            k = int(np.argmax(saving))
            if saving[k] > best[0]:
                best = (float(saving[k]), int(t[k]))
        if best[1] is None:
            break
        cuts = sorted([*cuts, best[1]])
    return tuple((lo, hi, int(counts[lo])) for lo, hi in itertools.pairwise(cuts))


@functools.partial(jax.jit, static_argnames=("blocks1", "blocks2", "reverse"))
def _two_arm(w, u_g, u_a, counts, *, blocks1, blocks2, reverse: bool):
    if reverse:
        u_g, u_a = u_g[:, ::-1], u_a[:, ::-1]
    out = jnp.zeros_like(w)
    if blocks1:  # rows [0, s): rows first
        ug = u_g[:, : blocks1[-1][1]]
        p = _mm(ug.T, w)
        zs = []
        for lo, hi, k in blocks1:
            ua = u_a[:, :k]
            c = _mm(p[lo:hi], ua)
            c = jnp.where(jnp.arange(k)[None, :] < counts[lo:hi, None], c, 0)
            zs.append(_mm(c, ua.T))
        out = out + _mm(ug, jnp.concatenate(zs, axis=0))
    if blocks2:  # rows [s, r): columns first
        cs = blocks2[0][2]
        ua = u_a[:, :cs]
        q = _mm(w, ua)
        x = jnp.zeros((w.shape[0], cs), w.dtype)
        for lo, hi, k in blocks2:
            ug = u_g[:, lo:hi]
            c = _mm(ug.T, q[:, :k])
            c = jnp.where(jnp.arange(k)[None, :] < counts[lo:hi, None], c, 0)
            x = x.at[:, :k].add(_mm(ug, c))
        out = out + _mm(x, ua.T)
    return out


def staircase_plan(counts: np.ndarray, n: int) -> dict:
    """How `staircase_product` will compute a staircase: complement or not, split s, row blocks,
    and estimated flops (also used by the benchmark to report the chosen path)."""
    counts = np.asarray(counts, np.int64)
    comp = (n - counts)[::-1]  # the complement, rows and columns reversed: again a staircase
    costs, costs_c = arm_costs(counts, n), arm_costs(comp, n)
    reverse = bool(costs_c.min() < costs.min())
    c = comp if reverse else counts
    s = int(np.argmin(costs_c if reverse else costs))
    r = int((c > 0).sum())
    return {
        "complement": reverse,
        "counts": c,
        "s": s,
        "r": r,
        "blocks1": row_blocks(c, 0, s, n),
        "blocks2": row_blocks(c, s, r, len(c)),
        "flops": float(min(costs.min(), costs_c.min())),
        "dense_flops": 4.0 * len(c) * n * (len(c) + n),
    }


def staircase_product(
    w: jax.Array, u_g: jax.Array, u_a: jax.Array, counts: np.ndarray
) -> tuple[int, jax.Array]:
    """P(S) = U_G ((U_Gᵀ W U_A) ⊙ S) U_Aᵀ for the staircase S given by `counts`, as (a, X) with
    P(S) = a·W + X (a ∈ {0, 1}: 1 when computed through the complement, P(S) = W − P(not S)).

    Args:
      w: W [m, n]; u_g: [m, m]; u_a: [n, n], all in the working dtype.
      counts: [m] non-increasing ints in [0, n].
    """
    plan = staircase_plan(counts, w.shape[1])
    a = int(plan["complement"])
    if plan["r"] == 0:
        return a, jnp.zeros_like(w)
    x = _two_arm(
        w,
        u_g,
        u_a,
        jnp.asarray(plan["counts"], jnp.int32),
        blocks1=plan["blocks1"],
        blocks2=plan["blocks2"],
        reverse=plan["complement"],
    )
    return a, (-x if a else x)


@jax.jit
def _dense_product(w, u_g, u_a, mask):
    c = _mm(_mm(u_g.T, w), u_a)
    return _mm(_mm(u_g, jnp.where(mask, c, 0)), u_a.T)


# Below this many flops the dense product is cheaper than compiling staircase arms per shape.
SMALL_DENSE_FLOPS = 2e8


def masked_product(
    w: np.ndarray,
    u_g: np.ndarray,
    u_a: np.ndarray,
    selection: Selection,
    dtype: np.dtype,
    path: str = "auto",
) -> np.ndarray:
    """W' = U_G ((U_Gᵀ W U_A) ⊙ M) U_Aᵀ with M = `selection`, in `dtype`, as host numpy.

    Args:
      w: W [d_out, d_in] (HF layout). u_g: [d_out, d_out] columns = eigenvectors of G (λ order of
        the selection's rows). u_a: [d_in, d_in] columns = eigenvectors of A (μ order).
      selection: the kept set (staircases and/or a dense mask).
      dtype: working dtype (float64 requires `precision_scope("float64")`).
      path: "staircase" (two-arm products), "dense" (the full C ⊙ M), or "auto": dense for masks
        and for small matrices (one compiled program per shape), staircase otherwise.
    """
    m, n = w.shape
    if u_g.shape != (m, m) or u_a.shape != (n, n) or selection.shape != (m, n):
        raise ValueError(
            f"Shapes disagree: W {w.shape}, U_G {u_g.shape}, U_A {u_a.shape}, "
            f"selection {selection.shape}; W must be [d_out, d_in] with U_G "
            f"[d_out, d_out] and U_A [d_in, d_in]."
        )
    wd = jnp.asarray(w, dtype)
    ug, ua = jnp.asarray(u_g, dtype), jnp.asarray(u_a, dtype)
    if path not in ("auto", "staircase", "dense"):
        raise ValueError(f"path {path!r} must be auto, staircase or dense.")
    small = 4.0 * m * n * (m + n) <= SMALL_DENSE_FLOPS
    if selection.mask is not None or path == "dense" or (path == "auto" and small):
        mask = jnp.asarray(selection.dense_mask())
        return np.asarray(_dense_product(wd, ug, ua, mask))
    coef_w = int(selection.include_all)
    acc = jnp.zeros_like(wd)
    for sign, counts in selection.staircases:
        a, x = staircase_product(wd, ug, ua, counts)
        coef_w += sign * a
        acc = acc + sign * x
    if coef_w not in (0, 1):
        raise AssertionError(f"kept set is not a 0/1 mask (W coefficient {coef_w}).")
    return np.asarray(acc + wd if coef_w else acc)
