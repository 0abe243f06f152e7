"""Population curvature spectrum of one weight: λ, μ, the cumulative mass of Π = λ_i μ_j, ρ cuts.

All quantities use the eigen run's per-position mean factors (A = mean a aᵀ, G = mean g gᵀ), with
negative eigenvalues (rounding) clamped to 0. Mass curves and band masses are exact: the top-k
components of a Kronecker spectrum form a staircase (`editing.selection.staircase_by_count`), whose
mass Σ_i λ_i (μ_0 + … + μ_{c_i−1}) comes from prefix sums; no Π matrix is formed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kfac_mem.analysis.bands import BANDS, check_bands
from kfac_mem.decomposition.store import SiteEigen
from kfac_mem.editing.selection import Spectrum, band_ranks, select_mass, staircase_by_count


def staircase_mass(spec: Spectrum, counts: np.ndarray) -> float:
    """Σ_i λ_i Σ_{j < c_i} μ_j (float64) of a staircase with row counts `counts`."""
    prefix = np.concatenate([[0.0], np.cumsum(spec.mu)])
    return float(spec.lam @ prefix[counts])


DENSE_LIMIT = 1 << 22  # components up to which the mass curve sorts Π directly


def _top_mass_fn(spec: Spectrum, dense_limit: int = DENSE_LIMIT):
    """k -> mass of the k largest components: a sorted cumulative sum for small matrices, exact
    staircases (no Π matrix) for large ones."""
    if spec.shape[0] * spec.shape[1] <= dense_limit:
        cums = np.concatenate([[0.0], np.cumsum(np.sort(spec.matrix().reshape(-1))[::-1])])
        return lambda k: float(cums[k])
    return lambda k: staircase_mass(spec, staircase_by_count(spec, k))


def curve_fractions(n: int, points: int = 120) -> np.ndarray:
    """Component fractions in (0, 1] for a mass curve: log-spaced from 1/n, then linear."""
    lo = np.logspace(np.log10(1.0 / n), -1, points // 2) if n > 10 else np.empty(0)
    return np.unique(np.clip(np.concatenate([lo, np.linspace(0.1, 1.0, points // 2)]), 0, 1))


def effective_rank(w: np.ndarray) -> float:
    """exp(entropy) of w/Σw (w clamped at 0): how many eigenvalues carry the mass."""
    p = np.maximum(np.asarray(w, np.float64), 0.0)
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0


def spectrum_summary(
    eig: SiteEigen, rhos=(0.6, 0.8), bands=BANDS, curve_points: int = 120
) -> dict[str, Any]:
    """Numbers describing one weight's population curvature spectrum.

    Returns a JSON-ready dict: d_out, d_in, components N, total mass (Σλ)(Σμ), the number of
    clamped negative eigenvalues, effective ranks of λ and μ, for each ρ the kept components
    (count and fraction of N) and the curvature threshold τ = min kept Π, each band's share of the
    mass, and the mass curve {fraction of components (descending Π), fraction of mass}.
    """
    name = eig.site.id
    spec = Spectrum.kronecker(eig.lam, eig.mu, name)
    d_out, d_in = spec.shape
    n = d_out * d_in
    total = spec.total
    cuts = []
    for rho in rhos:
        sel = select_mass(spec, float(rho), name)
        counts = sel.staircases[0][1]
        rows = np.nonzero(counts)[0]
        tau = float(np.min(spec.lam[rows] * spec.mu[counts[rows] - 1])) if rows.size else 0.0
        cuts.append(
            {
                "rho": float(rho),
                "kept_components": int(sel.kept),
                "kept_fraction_of_components": sel.kept / n,
                "kept_mass_fraction": sel.kept_fraction,
                "tau": tau,
            }
        )
    fractions = curve_fractions(n, curve_points if n <= DENSE_LIMIT else min(curve_points, 48))
    top_mass = _top_mass_fn(spec)
    band_mass = []
    for band_name, lo, hi in check_bands(bands):
        k_lo, k_hi = band_ranks(spec.shape, lo, hi)
        m = top_mass(k_hi) - top_mass(k_lo)
        band_mass.append({"band": band_name, "components": k_hi - k_lo, "mass_fraction": m / total})
    mass = [top_mass(round(f * n)) / total for f in fractions]
    return {
        "d_out": d_out,
        "d_in": d_in,
        "components": n,
        "total_mass": total,
        "lam_max": float(spec.lam[0]),
        "mu_max": float(spec.mu[0]),
        "clamped_negative": int((np.asarray(eig.lam) < 0).sum() + (np.asarray(eig.mu) < 0).sum()),
        "effective_rank_lam": effective_rank(spec.lam),
        "effective_rank_mu": effective_rank(spec.mu),
        "rho_cuts": cuts,
        "band_mass": band_mass,
        "mass_curve": {"fraction_of_components": fractions.tolist(), "fraction_of_mass": mass},
    }
