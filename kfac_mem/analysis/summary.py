"""Host-side per-set summaries of per-example statistics: distributions, idiosyncrasy, strengths.

Idiosyncrasy of a set's top directions (examples with zero curvature at the layer excluded): let
S_n be example n's top-k components (by Γ̃_n,ij²) and c_d = #{n : d ∈ S_n} the number of the N
examples whose top-k holds component d. Then
  top_overlap          mean over ordered pairs n ≠ m of |S_n ∩ S_m| / k
                       = Σ_d c_d (c_d − 1) / (N (N − 1) k)      (0: no two examples share a top
                       direction; 1: all examples have the same top-k)
  unique_fraction      share of all N·k top entries whose component is in no other example's top-k
  max_direction_share  max_d c_d / N (the most widely shared top direction)
All three are exact and need only the running counts c_d, not the examples' arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def distribution(x: np.ndarray) -> dict[str, float]:
    """{mean, median, q10, q90, min, max} of a 1-d array (NaN-free; empty -> NaNs)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {k: float("nan") for k in ("mean", "median", "q10", "q90", "min", "max")}
    q10, med, q90 = np.quantile(x, [0.1, 0.5, 0.9])
    return {
        "mean": float(x.mean()),
        "median": float(med),
        "q10": float(q10),
        "q90": float(q90),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def derived(total: np.ndarray, fourth: np.ndarray, top_values: np.ndarray, band: np.ndarray):
    """(sharpness [N], participation ratio [N], band shares [N, n_bands]) from the raw sums.

    sharpness = Σ top-k Γ̃² / Σ Γ̃²; participation ratio = (ΣΓ̃²)² / ΣΓ̃⁴ (the number of
    components that would carry the curvature if it were spread evenly); band share = band mass /
    total. Examples with zero total get NaN.
    """
    total = np.asarray(total, np.float64)
    ok = total > 0
    safe = np.where(ok, total, 1.0)
    sharp = np.where(ok, np.clip(np.asarray(top_values, np.float64), 0, None).sum(1) / safe, np.nan)
    pr = np.where(ok, total**2 / np.where(ok, np.maximum(fourth, 1e-300), 1.0), np.nan)
    shares = np.where(ok[:, None], np.asarray(band, np.float64) / safe[:, None], np.nan)
    return sharp, pr, shares


class DirectionCounts:
    """Running c_d: in how many examples' top-k each component d appears."""

    def __init__(self, k: int):
        self.k = int(k)
        self.n = 0
        self.keys = np.empty(0, np.int64)
        self.counts = np.empty(0, np.int64)

    def add(self, top_index: np.ndarray) -> None:
        """top_index int [b, k] of b examples (each row distinct components)."""
        top_index = np.asarray(top_index, np.int64)
        if top_index.size == 0:
            return
        self.n += top_index.shape[0]
        keys = np.concatenate([self.keys, top_index.ravel()])
        weights = np.concatenate([self.counts, np.ones(top_index.size, np.int64)])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.counts = np.bincount(inverse, weights=weights).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        n, k, c = self.n, self.k, self.counts
        if n < 2:
            return {
                "examples": n,
                "top_overlap": float("nan"),
                "unique_fraction": float("nan"),
                "max_direction_share": float("nan"),
                "distinct_directions": int(c.size),
            }
        return {
            "examples": n,
            "top_overlap": float((c * (c - 1)).sum() / (n * (n - 1) * k)),
            "unique_fraction": float((c == 1).sum() / (n * k)),
            "max_direction_share": float(c.max() / n),
            "distinct_directions": int(c.size),
        }


def brute_force_overlap(top_index: np.ndarray) -> float:
    """Mean over ordered pairs of |S_n ∩ S_m| / k by direct set intersection (tests)."""
    sets = [set(map(int, row)) for row in top_index]
    n, k = len(sets), top_index.shape[1]
    vals = [len(sets[a] & sets[b]) / k for a in range(n) for b in range(n) if a != b]
    return float(np.mean(vals))


class StrengthSums:
    """Token-weighted sums of band activation strengths of one set at one layer, per basis."""

    def __init__(self, bases: Sequence[str], n_bands: int):
        self.norm = {b: np.zeros(n_bands) for b in bases}
        self.sq = {b: np.zeros(n_bands) for b in bases}
        self.positions = 0.0

    def add(self, act: dict[str, tuple[np.ndarray, np.ndarray]], n_positions: np.ndarray) -> None:
        for basis, (s1, s2) in act.items():
            self.norm[basis] += np.asarray(s1, np.float64).sum(0)
            self.sq[basis] += np.asarray(s2, np.float64).sum(0)
        self.positions += float(np.sum(n_positions))

    def summary(self) -> dict[str, dict[str, list[float]]]:
        """Per basis: mean per-token band norm mean_t ‖P_B x_t‖ and RMS sqrt(mean_t ‖P_B x_t‖²)."""
        p = max(self.positions, 1.0)
        return {
            b: {"mean_norm": (self.norm[b] / p).tolist(), "rms": np.sqrt(self.sq[b] / p).tolist()}
            for b in self.norm
        }


def ratios(strength: dict[str, Any], clean: dict[str, Any], key: str = "mean_norm") -> dict:
    """Per basis: band strength of a set divided by that of the clean set."""
    out = {}
    for basis, v in strength.items():
        num, den = np.asarray(v[key]), np.asarray(clean[basis][key])
        out[basis] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan).tolist()
    return out


def set_summary(
    sc: dict[str, list],
    counts: DirectionCounts,
    pooled_total: float,
    pooled_top: float,
    n_bands: int,
) -> dict[str, Any]:
    """One set's numbers at one layer from its per-batch scalars (`total`, `sharpness`, `pr`,
    `share`, `band` lists), direction counts and pooled profile sums (Σ and top-k Σ of
    Σ_n Γ̃_n²). Examples with zero curvature are excluded from the band shares."""
    total = np.concatenate(sc["total"])
    sharp = np.concatenate(sc["sharpness"])
    pr = np.concatenate(sc["pr"])
    share = np.concatenate(sc["share"]).reshape(-1, n_bands)
    band = np.concatenate(sc["band"]).reshape(-1, n_bands).astype(np.float64)
    ok = total > 0
    positions = np.concatenate(sc["positions"]) if sc.get("positions") else None
    mean_sharp = float(np.nanmean(sharp)) if ok.any() else float("nan")
    pooled_sharp = pooled_top / pooled_total if pooled_total > 0 else float("nan")
    idio = counts.summary()
    idio.update(
        {
            "pooled_sharpness": pooled_sharp,
            "mean_sharpness": mean_sharp,
            "concentration_retained": pooled_sharp / mean_sharp if mean_sharp > 0 else float("nan"),
        }
    )
    return {
        "examples": int(total.size),
        "zero_curvature_examples": int((~ok).sum()),
        "total": distribution(total),
        "sharpness": distribution(sharp),
        "participation_ratio": distribution(pr),
        "band_share_mean": np.nanmean(share[ok], 0).tolist()
        if ok.any()
        else [float("nan")] * n_bands,
        "band_share_median": np.nanmedian(share[ok], 0).tolist()
        if ok.any()
        else [float("nan")] * n_bands,
        "pooled_band_share": (band.sum(0) / max(band.sum(), 1e-300)).tolist(),
        "idiosyncrasy": idio,
        "values": None if positions is None else per_example_values(sc, positions, n_bands),
    }


def per_example_values(sc: dict[str, list], positions: np.ndarray, n_bands: int) -> dict:
    """Per-example arrays the findings bootstrap over (examples in set order; NaN where an
    example has zero curvature): total curvature Σ Γ̃² and the top component Γ̃²_max, each also
    per loss position; top-k share; participation ratio; band shares [N, bands]; band activation
    strength per basis (mean per-token ‖P_B x_t‖) [N, bands]."""
    total = np.concatenate(sc["total"]).astype(np.float64)
    top = np.concatenate(sc["top"]).astype(np.float64)
    ok = total > 0
    per_pos = np.maximum(positions, 1.0)
    out = {
        "positions": positions,
        "total": total,
        "total_per_position": total / per_pos,
        "top_value": np.where(ok, top, np.nan),
        "top_value_per_position": np.where(ok, top / per_pos, np.nan),
        "sharpness": np.concatenate(sc["sharpness"]),
        "participation_ratio": np.concatenate(sc["pr"]),
        "band_share": np.concatenate(sc["share"]).reshape(-1, n_bands),
    }
    for key in sc:
        if key.startswith("act_"):
            out[key] = np.concatenate(sc[key]).reshape(-1, n_bands)
    return out
