"""Brute-force references for the curvature-mass edit, and a comparison that is exact up to ties.

The reference ranks the float64 products Π = `kronecker_curvature(λ, μ)` (the expression every
selection path uses) with a stable descending sort, so tied components keep row-major order, and
keeps the shortest prefix whose cumulative mass reaches ρ·ΣΠ (the crossing component included).
On any one machine the library and this reference see the same λ and μ; across machines the
eigenvalues differ in their last bits, so components whose Π agree to rounding may swap across the
threshold. `assert_edit_matches_up_to_ties` therefore accepts exactly those swaps and checks
everything else: which components were kept (recovered from the edited weight), the kept mass,
and that the edited weight is the masked reconstruction of that kept set.
"""

from __future__ import annotations

import numpy as np

# Π within this relative distance of the crossing value counts as tied: float32 eigenvalues carry
# ~6e-8 relative rounding each, so their products ~1.2e-7; 1e-6 leaves a margin of 8x.
TIE_RTOL = 1e-6


def masked_reference(w: np.ndarray, u_g: np.ndarray, u_a: np.ndarray, mask: np.ndarray):
    """W' = U_G((U_Gᵀ W U_A) ⊙ M)U_Aᵀ in float64; W [d_out, d_in], M bool [d_out, d_in]."""
    u_g, u_a, w = (np.asarray(x, np.float64) for x in (u_g, u_a, w))
    return u_g @ ((u_g.T @ w @ u_a) * mask) @ u_a.T


def brute_force_order(pi: np.ndarray) -> np.ndarray:
    """Flat row-major indices of Π [d_out, d_in] by descending Π, ties in row-major order."""
    return np.argsort(-np.maximum(pi, 0).ravel(), kind="stable")


def brute_force_mask(pi: np.ndarray, rho: float) -> np.ndarray:
    """Kept set (bool [d_out, d_in]) of the shortest descending prefix with mass ≥ ρ·ΣΠ."""
    p = np.maximum(pi, 0)
    order = brute_force_order(p)
    cums = np.cumsum(p.ravel()[order])
    k = min(int(np.searchsorted(cums, rho * p.sum(), side="left")) + 1, p.size)
    mask = np.zeros(p.size, bool)
    mask[order[:k]] = True
    return mask.reshape(p.shape)


def brute_force_band(pi: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Kept set of a band edit: everything except ranks [lo%, hi%) of descending Π."""
    order = brute_force_order(pi)
    band = np.zeros(pi.size, bool)
    band[order[round(lo / 100 * pi.size) : round(hi / 100 * pi.size)]] = True
    return ~band.reshape(pi.shape)


def assert_edit_matches_up_to_ties(
    got: np.ndarray,
    w: np.ndarray,
    u_g: np.ndarray,
    u_a: np.ndarray,
    pi: np.ndarray,
    ref_mask: np.ndarray,
    atol: float,
) -> None:
    """`got` is W' for a kept set that equals `ref_mask` except on components tied with the
    crossing value; W [d_out, d_in], U_G [d_out, d_out], U_A [d_in, d_in], Π [d_out, d_in].

    The kept set of `got` is read from C' = U_Gᵀ W' U_A against C = U_Gᵀ W U_A (kept: C' ≈ C,
    dropped: C' ≈ 0; components with |C| too small to tell are taken from the reference). Then:
    it differs from the reference only where Π is within TIE_RTOL of a boundary value (the smallest
    kept or largest dropped Π of the reference), the kept masses agree to the mass of those tied
    components' rounding, and `got` equals the masked reconstruction of its kept set within atol.
    """
    w64, u_g, u_a = (np.asarray(x, np.float64) for x in (w, u_g, u_a))
    c = u_g.T @ w64 @ u_a
    c_got = u_g.T @ np.asarray(got, np.float64) @ u_a
    decided = np.abs(c) > 100 * atol
    kept = np.where(decided, np.abs(c_got - c) < np.abs(c) / 2, ref_mask)
    diff = kept != ref_mask
    if diff.any():
        p = np.maximum(pi, 0)
        bounds = [p[ref_mask].min()] if ref_mask.any() else []
        if (~ref_mask).any():
            bounds.append(p[~ref_mask].max())
        tied = np.zeros(p.shape, bool)
        for tau in bounds:
            tied |= np.abs(p - tau) <= TIE_RTOL * tau
        assert not (diff & ~tied).any(), (
            f"kept set differs from the brute-force reference at {np.argwhere(diff & ~tied)[:5]}, "
            f"which are not ties of the crossing value"
        )
        assert abs(int(kept.sum()) - int(ref_mask.sum())) <= 1
        np.testing.assert_allclose(
            p[kept].sum(), p[ref_mask].sum(), rtol=2 * TIE_RTOL * max(int(diff.sum()), 1)
        )
    np.testing.assert_allclose(got, masked_reference(w64, u_g, u_a, kept), atol=atol)
