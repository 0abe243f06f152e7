"""Which rank-one components of a weight to keep, by curvature (docs/design.md §2.6).

Component (i, j) of W [d_out, d_in] is u_G,i u_A,jᵀ with curvature Π_ij: λ_i μ_j for K-FAC (the
default) or a given [d_out, d_in] matrix (EK-FAC corrected eigenvalues). Negative eigenvalues are
rounding and are clamped to 0. Sorting all Π descending, `select_mass` keeps the shortest prefix
whose cumulative mass reaches ρ·total, the crossing component included; total = (Σλ)(Σμ) for
K-FAC, ΣΠ for a full matrix.

Ties. Every path computes Π with one expression, `kronecker_curvature`: the float64 product
float64(λ_i)·float64(μ_j) (`Spectrum.matrix` materializes exactly these values). Two components are
tied when those float64 values are bitwise equal; among tied components the one with the smaller
row-major index (smaller i, then smaller j) ranks first, in the staircase path, the full-Π path and
the brute-force references of the tests alike (the authors' heap breaks ties the same way).
Components whose curvatures agree only up to rounding are not ties: which of them crosses the
threshold depends on the last bit of λ and μ, so it can differ between machines and library
versions (eigh is not bitwise reproducible). Two edits of the same matrix are therefore compared by
kept mass (equal to rounding) and by ‖W'₁ − W'₂‖_F = ‖C ⊙ (M₁ − M₂)‖_F (C = U_Gᵀ W U_A), the norm
of the components on which they differ, never by their index sets.

For K-FAC, λ and μ are sorted, so the kept set is a staircase {Π_ij ≥ τ}: row i keeps columns
[0, c_i). The threshold τ is found by bisection on the bit pattern of float64 τ (≤ 64 rounds), each
round counting per row, with a vectorized binary search over j, how many exact float64 products
λ_i·μ_j reach τ, and the mass Σ_i λ_i·(μ_0 + … + μ_{c_i−1}) from float64 prefix sums: O(d_out·log
d_in) per round and no loop over components. A full Π matrix has no such structure and is sorted
globally instead.

A `Selection` describes the kept set as ±1 combinations of staircases (plus optionally "all"), so a
band edit (remove the components ranked in [lo%, hi%) of Π) is kept = all − top(hi) + top(lo),
and the reconstruction never needs a dense mask for K-FAC.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

# ρ at or above this leaves a matrix untouched (bit-identical).
NO_EDIT_RHO = 0.9999


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Curvature of every component of one weight W [d_out, d_in].

    Either K-FAC (λ [d_out] and μ [d_in], each descending; Π = λ μᵀ) or a full matrix Π
    [d_out, d_in] (EK-FAC corrected eigenvalues, indexed in the same eigenbases). Negative entries
    are clamped to 0 on construction; values are float64.
    """

    lam: np.ndarray | None = None
    mu: np.ndarray | None = None
    pi: np.ndarray | None = None

    @classmethod
    def kronecker(cls, lam: np.ndarray, mu: np.ndarray, name: str = "matrix") -> Spectrum:
        lam = np.maximum(np.asarray(lam, np.float64), 0.0)
        mu = np.maximum(np.asarray(mu, np.float64), 0.0)
        for label, v in (("λ (eigenvalues of G)", lam), ("μ (eigenvalues of A)", mu)):
            if v.ndim != 1 or not np.isfinite(v).all():
                raise ValueError(f"{name}: {label} must be a finite vector, got shape {v.shape}.")
            if np.any(np.diff(v) > 0):
                raise ValueError(
                    f"{name}: {label} must be sorted descending (as `kfac-mem "
                    f"decompose` stores them)."
                )
        if lam.sum() == 0 or mu.sum() == 0:
            raise ValueError(
                f"{name}: the factors have no positive curvature (all eigenvalues ≤ 0), "
                f"so no component can be ranked; the factor run saw no signal here."
            )
        return cls(lam=lam, mu=mu)

    @classmethod
    def dense(cls, pi: np.ndarray, name: str = "matrix") -> Spectrum:
        pi = np.maximum(np.asarray(pi, np.float64), 0.0)
        if pi.ndim != 2 or not np.isfinite(pi).all():
            raise ValueError(
                f"{name}: Π must be a finite [d_out, d_in] matrix, got shape {pi.shape}."
            )
        if pi.sum() == 0:
            raise ValueError(f"{name}: every corrected eigenvalue is ≤ 0; nothing can be ranked.")
        return cls(pi=pi)

    @property
    def is_kronecker(self) -> bool:
        return self.pi is None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.lam), len(self.mu)) if self.is_kronecker else self.pi.shape

    @property
    def total(self) -> float:
        """(Σλ)(Σμ) for K-FAC, ΣΠ for a full matrix (negatives clamped)."""
        if self.is_kronecker:
            return float(self.lam.sum()) * float(self.mu.sum())
        return float(self.pi.sum())

    def matrix(self) -> np.ndarray:
        """Π [d_out, d_in] float64 (materialized; for tests and small matrices)."""
        return kronecker_curvature(self.lam, self.mu) if self.is_kronecker else self.pi


def kronecker_curvature(lam: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Π = λ μᵀ [d_out, d_in] as the float64 products every selection path ranks.

    λ [d_out] and μ [d_in] are cast to float64 and clamped at 0 before the product, so
    Π_ij = float64(λ_i)·float64(μ_j) bit for bit as `row_counts` computes it.
    """
    lam = np.maximum(np.asarray(lam, np.float64), 0.0)
    mu = np.maximum(np.asarray(mu, np.float64), 0.0)
    return lam[:, None] * mu[None, :]


@dataclasses.dataclass(frozen=True)
class Selection:
    """A kept set of components of a [d_out, d_in] weight.

    kept = (everything if `include_all`) + Σ_t sign_t · staircase_t + (`mask` if given), where a
    staircase is given by row counts c [d_out] (row i keeps columns [0, c_i), c non-increasing).
    The terms are disjoint/nested so the result is a 0/1 mask.

    Attributes:
      shape: (d_out, d_in).
      staircases: ((sign, counts), ...) with sign ±1.
      include_all: whether the identity (all components) is part of the sum.
      mask: a dense bool [d_out, d_in] kept set (full-Π selections), else None.
      kept: number of kept components.
      kept_mass: Σ of kept Π (float64); total_mass: Σ of all Π.
    """

    shape: tuple[int, int]
    staircases: tuple[tuple[int, np.ndarray], ...] = ()
    include_all: bool = False
    mask: np.ndarray | None = None
    kept: int = 0
    kept_mass: float = 0.0
    total_mass: float = 0.0

    @property
    def kept_fraction(self) -> float:
        return self.kept_mass / self.total_mass if self.total_mass else 1.0

    def dense_mask(self) -> np.ndarray:
        """The kept set as bool [d_out, d_in]."""
        if self.mask is not None:
            return self.mask
        m, n = self.shape
        acc = np.full((m, n), int(self.include_all), np.int8)
        cols = np.arange(n)
        for sign, counts in self.staircases:
            acc += sign * (cols[None, :] < counts[:, None]).astype(np.int8)
        return acc.astype(bool)


# --- staircases (K-FAC) ---------------------------------------------------------------------------


def row_counts(lam: np.ndarray, mu: np.ndarray, tau: float, strict: bool = False) -> np.ndarray:
    """c_i = #{j : λ_i·μ_j ≥ τ} (> τ if `strict`), exact on the float64 products.

    λ_i·μ_j is non-increasing in j (μ descending, rounding monotone), so each row is a binary
    search; all rows are searched together (≈ log2(d_in) vectorized steps).
    """
    n = len(mu)
    lo = np.zeros(len(lam), np.int64)
    hi = np.full(len(lam), n, np.int64)
    active = lo < hi
    while active.any():
        mid = (lo + hi) // 2
        p = lam * mu[np.minimum(mid, n - 1)]
        ok = p > tau if strict else p >= tau
        lo = np.where(active & ok, mid + 1, lo)
        hi = np.where(active & ~ok, mid, hi)
        active = lo < hi
    return lo


def _bits(x: float) -> int:
    return int(np.float64(x).view(np.int64))


def _float(b: int) -> float:
    return float(np.int64(b).view(np.float64))


def _staircase_top(
    spec: Spectrum,
    need: float,
    measure: Callable[[np.ndarray], float],
    tie_count: Callable[[float, float], int],
) -> np.ndarray:
    """Row counts of the shortest descending prefix with measure ≥ need (ties row-major)."""
    lam, mu = spec.lam, spec.mu
    m, n = spec.shape
    if measure(row_counts(lam, mu, 0.0)) < need:  # rounding at ρ → 1: keep everything
        return np.full(m, n, np.int64)
    lo, hi = 0, _bits(lam[0] * mu[0]) + 1  # measure_ge(lo) ≥ need > measure_ge(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(row_counts(lam, mu, _float(mid))) >= need:
            lo = mid
        else:
            hi = mid
    tau = _float(lo)
    c_ge, c_gt = row_counts(lam, mu, tau), row_counts(lam, mu, tau, strict=True)
    ties = c_ge - c_gt
    k = min(max(tie_count(need - measure(c_gt), tau), 1), int(ties.sum()))
    before = np.cumsum(ties) - ties
    return c_gt + np.clip(k - before, 0, ties)


def _mass_fn(spec: Spectrum) -> Callable[[np.ndarray], float]:
    prefix = np.concatenate([[0.0], np.cumsum(spec.mu)])
    return lambda counts: float(spec.lam @ prefix[counts])


def _count_fn(counts: np.ndarray) -> float:
    return float(counts.sum())


def staircase_by_mass(spec: Spectrum, rho: float) -> np.ndarray:
    """Row counts of the kept staircase: shortest prefix with mass ≥ ρ·(Σλ)(Σμ)."""
    return _staircase_top(
        spec,
        rho * spec.total,
        _mass_fn(spec),
        lambda gap, tau: math.ceil(gap / tau) if tau > 0 else 1,
    )


def staircase_by_count(spec: Spectrum, k: int) -> np.ndarray:
    """Row counts of the top-k components by Π (ties row-major). k = 0 keeps nothing."""
    m, n = spec.shape
    if k <= 0:
        return np.zeros(m, np.int64)
    if k >= m * n:
        return np.full(m, n, np.int64)
    return _staircase_top(spec, float(k), _count_fn, lambda gap, tau: round(gap))


# --- full Π (EK-FAC) -----------------------------------------------------------------------------


def _dense_order(spec: Spectrum) -> np.ndarray:
    """Flat row-major indices sorted by Π descending; stable, so ties keep (i, j) order."""
    return np.argsort(-spec.pi.reshape(-1), kind="stable")


def _dense_top(spec: Spectrum, k: int, order: np.ndarray | None = None) -> np.ndarray:
    order = _dense_order(spec) if order is None else order
    mask = np.zeros(spec.pi.size, bool)
    mask[order[:k]] = True
    return mask.reshape(spec.pi.shape)


# --- public selections ----------------------------------------------------------------------------


def _check_rho(rho: float, name: str) -> None:
    if not (isinstance(rho, int | float) and math.isfinite(rho) and 0 < rho <= 1):
        raise ValueError(
            f"{name}: ρ = {rho!r} is outside (0, 1]; ρ is the fraction of curvature mass "
            f"kept (the paper uses 0.6 for OLMo-2 7B gate/up)."
        )


def _finish(spec: Spectrum, staircases=(), include_all=False, mask=None) -> Selection:
    sel = Selection(spec.shape, tuple(staircases), include_all, mask)
    if spec.is_kronecker and mask is None:
        mass = _mass_fn(spec)
        kept = spec.shape[0] * spec.shape[1] if include_all else 0
        kept_mass = spec.total if include_all else 0.0
        for sign, counts in staircases:
            kept += sign * int(counts.sum())
            kept_mass += sign * mass(counts)
    else:
        dense = sel.dense_mask()
        kept = int(dense.sum())
        kept_mass = float(spec.matrix()[dense].sum())
    return dataclasses.replace(sel, kept=kept, kept_mass=kept_mass, total_mass=spec.total)


def select_mass(spec: Spectrum, rho: float, name: str = "matrix") -> Selection:
    """Keep the shortest descending-Π prefix with cumulative mass ≥ ρ·total (crossing kept)."""
    _check_rho(rho, name)
    if spec.is_kronecker:
        return _finish(spec, [(1, staircase_by_mass(spec, rho))])
    order = _dense_order(spec)
    cums = np.cumsum(spec.pi.reshape(-1)[order])
    k = min(int(np.searchsorted(cums, rho * spec.total, side="left")) + 1, cums.size)
    return _finish(spec, mask=_dense_top(spec, k, order))


def band_ranks(shape: tuple[int, int], lo: float, hi: float) -> tuple[int, int]:
    """Component ranks [k_lo, k_hi) of the percentile band [lo%, hi%) of N = d_out·d_in."""
    n = shape[0] * shape[1]
    return round(lo / 100 * n), round(hi / 100 * n)


def select_band(spec: Spectrum, lo: float, hi: float, name: str = "matrix") -> Selection:
    """Keep everything except the components ranked in the band [lo%, hi%) of descending Π.

    Ranks are positions in the descending order of Π (ties: row-major), so [0, 10) is the top 10%
    of components by curvature and [50, 100) the bottom half.
    """
    if not (0 <= lo < hi <= 100):
        raise ValueError(
            f"{name}: band [{lo}, {hi}) must satisfy 0 ≤ lo < hi ≤ 100 (percent of "
            f"components ranked by descending curvature Π)."
        )
    k_lo, k_hi = band_ranks(spec.shape, lo, hi)
    if spec.is_kronecker:
        return _finish(
            spec,
            [(-1, staircase_by_count(spec, k_hi)), (1, staircase_by_count(spec, k_lo))],
            include_all=True,
        )
    order = _dense_order(spec)
    return _finish(spec, mask=~_dense_top(spec, k_hi, order) | _dense_top(spec, k_lo, order))
