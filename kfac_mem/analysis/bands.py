"""Population curvature bands: which components of W [d_out, d_in] lie in which Π-percentile band.

A band [lo%, hi%) holds the components ranked in [round(lo/100·N), round(hi/100·N)) when all
N = d_out·d_in components are sorted by descending Π = λ_i μ_j (ties row-major) — exactly the set
that `kfac-mem edit --method band` removes (`editing.selection.select_band`, `band_ranks`). Because
λ and μ are sorted, the top-k components form a staircase (row i keeps columns [0, c_i)), so the
bands of a matrix are stored as the row counts c [n_bands − 1, d_out] of the top-k staircases at
the inner boundaries, never as a dense [d_out, d_in] map.

The same percentile bands are used for two activation bases (paper Fig. 2/4): the eigenvectors of A
ranked by μ alone (`rank_bands`, one weight per column) and the right singular vectors of W ranked
by singular value.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from kfac_mem.editing.selection import Spectrum, band_ranks, staircase_by_count

# (name, lo %, hi %): the paper's bands over components ranked by descending curvature.
BANDS: tuple[tuple[str, float, float], ...] = (
    ("top10", 0.0, 10.0),
    ("10-25", 10.0, 25.0),
    ("25-50", 25.0, 50.0),
    ("bottom50", 50.0, 100.0),
)


def check_bands(bands) -> tuple[tuple[str, float, float], ...]:
    """Validate bands: contiguous, ascending, covering [0, 100), unique names."""
    bands = tuple((str(n), float(lo), float(hi)) for n, lo, hi in bands)
    if not bands:
        raise ValueError("`bands` is empty; give (name, lo, hi) percent bands covering 0..100.")
    edges = [bands[0][1]] + [hi for _, _, hi in bands]
    if edges[0] != 0 or edges[-1] != 100:
        raise ValueError(f"`bands` must start at 0 and end at 100 percent, got {bands}.")
    for (n1, _, hi), (n2, lo, _) in itertools.pairwise(bands):
        if hi != lo:
            raise ValueError(
                f"`bands` must be contiguous: {n1} ends at {hi} but {n2} starts at {lo}."
            )
    if any(lo >= hi for _, lo, hi in bands):
        raise ValueError(f"Every band needs lo < hi, got {bands}.")
    if len({n for n, _, _ in bands}) != len(bands):
        raise ValueError(f"Band names must be unique, got {[n for n, _, _ in bands]}.")
    return bands


@dataclasses.dataclass(frozen=True)
class KfacBands:
    """Π-percentile bands of one weight W [d_out, d_in].

    Attributes:
      shape: (d_out, d_in).
      counts: int32 [n_bands − 1, d_out]; counts[b, i] = number of leading columns of row i inside
        the top-k_b staircase, k_b = the component rank where band b ends. Nested: non-decreasing
        in b. Component (i, j) lies in band #{b : j ≥ counts[b, i]}.
    """

    shape: tuple[int, int]
    counts: np.ndarray

    def band_of(self) -> np.ndarray:
        """Dense band index int8 [d_out, d_in] (0 = highest curvature). For tests/small matrices."""
        cols = np.arange(self.shape[1])
        return (cols[None, None, :] >= self.counts[:, :, None]).sum(0).astype(np.int8)

    def column_multiplicity(self) -> np.ndarray:
        """n_B(j) float32 [d_in, n_bands]: #{i : (i, j) in band B}.

        Pair-faithful band norm of an input x (docs/design.md §4): ‖P_B x‖² = Σ_j n_B(j)(v_jᵀx)²,
        the summed squared activation |v_jᵀx|² of every component u_i v_jᵀ in the band.
        """
        d_out, d_in = self.shape
        cols = np.arange(d_in)
        # in_top[b, j] = #{i : j < counts[b, i]}
        in_top = [d_out - np.searchsorted(np.sort(c), cols, side="right") for c in self.counts]
        edges = np.stack([np.zeros(d_in, np.int64), *in_top, np.full(d_in, d_out)])
        return np.diff(edges, axis=0).T.astype(np.float32)


def kfac_bands(spec: Spectrum, bands=BANDS) -> KfacBands:
    """Bands of a K-FAC spectrum (Π = λ μᵀ) from the edit's own ranking (ties row-major)."""
    if not spec.is_kronecker:
        raise ValueError("kfac_bands needs a K-FAC (λ, μ) spectrum; bands are defined by Π = λμ.")
    bands = check_bands(bands)
    counts = [
        staircase_by_count(spec, band_ranks(spec.shape, 0.0, hi)[1]) for _, _, hi in bands[:-1]
    ]
    if not counts:  # one band: everything
        counts_arr = np.zeros((0, spec.shape[0]), np.int32)
    else:
        counts_arr = np.stack(counts).astype(np.int32)
    return KfacBands(spec.shape, counts_arr)


def rank_bands(n: int, bands=BANDS) -> np.ndarray:
    """One-hot band weights float32 [n, n_bands] of n items ranked descending (index = rank)."""
    bands = check_bands(bands)
    w = np.zeros((n, len(bands)), np.float32)
    for b, (_, lo, hi) in enumerate(bands):
        k_lo, k_hi = band_ranks((n, 1), lo, hi)
        w[k_lo:k_hi, b] = 1.0
    return w


def band_sizes(shape: tuple[int, int], bands=BANDS) -> list[int]:
    """Number of components in each band of a [d_out, d_in] weight."""
    return [int(np.subtract(*band_ranks(shape, lo, hi)[::-1])) for _, lo, hi in check_bands(bands)]
