"""EK-FAC corrected eigenvalues from per-example projections, their diagnostics, and saving them.

K-FAC models the curvature along component u_G,i u_A,jᵀ as Π_ij = λ_i μ_j. The EK-FAC correction
(George et al. 2018) keeps the Kronecker eigenbasis but replaces Π_ij by the measured second moment
of the per-example gradients along it. Here, with Γ̃_n = U_Gᵀ Γ_n U_A:

    Π^EK_ij = Σ_n Γ̃_n,ij² / Σ_n T_n,   T_n = number of loss positions of example n,

i.e. on the per-position scale of λ_i μ_j (the factors are per-position means; for windows of T
independent positions E_n[Γ̃_n,ij²] ≈ T λ_i μ_j). They are stored under the analysis output
(`decomposition.store.save_corrected_eigenvalues`; the eigen run is never written), from where
`kfac-mem edit --eigenvalues ekfac --ekfac DIR` reads them (docs/design.md §2.7, §5.8).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kfac_mem.analysis.bands import KfacBands
from kfac_mem.decomposition.store import EigenRun, save_corrected_eigenvalues
from kfac_mem.editing.selection import Spectrum, select_mass

NORMALIZATION = (
    "Pi_ij = sum_n Gamma~_n,ij^2 / sum_n T_n with T_n the number of loss positions of example n "
    "(per-position scale, comparable to lambda_i * mu_j)"
)


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation (ties broken by position) of two 1-d arrays."""
    rx = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)
    ry = np.argsort(np.argsort(y, kind="stable"), kind="stable").astype(np.float64)
    rx -= rx.mean()
    ry -= ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def diagnostics(
    pi: np.ndarray,
    lam_mu: tuple[np.ndarray, np.ndarray],
    bands: KfacBands,
    options,
    sample: int = 200_000,
) -> dict[str, Any]:
    """How the corrected eigenvalues Π^EK [d_out, d_in] compare with K-FAC's λ_i μ_j.

    Returns: trace ratio ΣΠ^EK / ((Σλ)(Σμ)); Spearman correlation of the two over the components
    (a seeded sample of ≤ `sample` components); each K-FAC band's share of the EK-FAC mass; and for
    each ρ the share of EK-FAC mass inside the K-FAC kept set and the components EK-FAC keeps.
    """
    lam, mu = lam_mu
    kfac = Spectrum.kronecker(lam, mu)
    pi = np.maximum(np.asarray(pi, np.float64), 0.0)
    total = float(pi.sum())
    d_out, d_in = pi.shape
    n = d_out * d_in
    rng = np.random.default_rng(0)
    idx = rng.choice(n, size=sample, replace=False) if n > sample else np.arange(n)
    i, j = np.divmod(idx, d_in)
    out: dict[str, Any] = {
        "total": total,
        "trace_ratio_to_kfac": total / kfac.total if kfac.total > 0 else float("nan"),
        "rank_correlation_with_kfac": rank_correlation(
            pi.reshape(-1)[idx], kfac.lam[i] * kfac.mu[j]
        ),
    }
    if total <= 0:
        return out
    band_of = bands.band_of().reshape(-1)
    n_bands = bands.counts.shape[0] + 1
    out["band_mass_fraction"] = (
        np.bincount(band_of, weights=pi.reshape(-1), minlength=n_bands) / total
    ).tolist()
    dense = Spectrum.dense(pi)
    cuts = []
    for rho in options.rhos:
        kept_kfac = select_mass(kfac, rho).dense_mask()
        ek = select_mass(dense, rho)
        cuts.append(
            {
                "rho": rho,
                "ekfac_mass_in_kfac_kept_set": float(pi[kept_kfac].sum() / total),
                "kfac_kept_components": int(kept_kfac.sum()),
                "ekfac_kept_components": int(ek.kept),
            }
        )
    out["rho_cuts"] = cuts
    return out


def save(eigen: EigenRun, values: dict[str, np.ndarray], info: dict[str, Any], out_dir: str) -> str:
    """Store corrected eigenvalues under the analysis output `out_dir` (ekfac/ + ekfac.json,
    with `info` as provenance); the eigen run is not touched. Returns `out_dir`."""
    save_corrected_eigenvalues(
        eigen.directory, {s: v.astype(np.float32) for s, v in values.items()}, out_dir, info
    )
    eigen.release()
    return out_dir
