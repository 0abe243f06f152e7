"""Curvature-mass selection on an 11008x4096 matrix: ours vs the heap walks, interleaved.

  python -m benchmarks.peers.bench_select [--rhos 0.6,0.8] [--max-pops 1000000] [--repeats 3]
      [--eigen DIR --site model.layers.22.mlp.gate_proj]

Per spectrum and ρ, each repeat runs (in rotated order):
  * ours: `kfac_mem.editing.selection.select_mass` (bisection on τ, float64, no loop over pairs);
  * heap (Python floats): `benchmarks/bench_edit.py`'s `heap_walk`, the lower bound of the
    reference release's loop (pure-Python products, no tensors);
  * heap (torch scalars): `reference_style.heap_select`, the release's style (each product a
    torch scalar read with `.item()`, on CPU, so without the CUDA sync the release pays).
Heaps stop after --max-pops pops; where that is short of the kept count their time is
extrapolated by the per-pop rate (marked). Spectra: those of bench_edit.py (synthetic power
laws) and, with --eigen, a measured (λ, μ) pair from an eigen run, resampled to 11008 / 4096 by
linear interpolation of log-eigenvalues over normalized rank.
Reports medians and the ratio heap seconds / ours seconds (goal ≥ 50x).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.bench_edit import SPECTRA, heap_walk, spectrum
from benchmarks.peers import reference_style
from benchmarks.peers.measure import emit, median
from kfac_mem.editing.selection import Spectrum, select_mass


def resampled(values: np.ndarray, size: int) -> np.ndarray:
    """Descending spectrum of `size` following `values`' shape (log-linear in normalized rank)."""
    v = np.maximum(np.asarray(values, np.float64), 0.0)
    v = np.maximum(v, v[v > 0].min())
    x = (np.arange(v.size) + 0.5) / v.size
    xi = (np.arange(size) + 0.5) / size
    return np.exp(np.interp(xi, x, np.log(v)))


def spectra(args) -> dict[str, Spectrum]:
    out = {name: spectrum(args.m, args.n, *p) for name, p in SPECTRA.items()}
    if args.eigen:
        from kfac_mem.decomposition.store import load_eigen

        e = load_eigen(args.eigen).site(args.site)
        name = f"measured {args.site.split('.', 1)[1]} (resampled)"
        out[name] = Spectrum.kronecker(resampled(e.lam, args.m), resampled(e.mu, args.n))
    return out


def time_torch_heap(spec: Spectrum, rho: float, max_pops: int) -> dict:
    lam = torch.as_tensor(spec.lam, dtype=torch.float32)
    mu = torch.as_tensor(spec.mu, dtype=torch.float32)
    t0 = time.perf_counter()
    mask, _ = reference_style.heap_select(lam, mu, rho, max_pops=max_pops)
    return {"seconds": time.perf_counter() - t0, "pops": int(mask.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=11008)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rhos", default="0.6,0.8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-pops", type=int, default=1_000_000)
    ap.add_argument("--eigen", default=None, help="an eigen run with a measured spectrum")
    ap.add_argument("--site", default="model.layers.22.mlp.gate_proj")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, spec in spectra(args).items():
        for rho in (float(r) for r in args.rhos.split(",")):
            kept = select_mass(spec, rho).kept
            runs: dict[str, list] = {"ours": [], "heap_python": [], "heap_torch": []}
            for r in range(args.repeats):
                order = list(runs)[r % 3 :] + list(runs)[: r % 3]
                for which in order:
                    if which == "ours":
                        t0 = time.perf_counter()
                        select_mass(spec, rho)
                        runs[which].append({"seconds": time.perf_counter() - t0, "pops": kept})
                    elif which == "heap_python":
                        h = heap_walk(spec.lam, spec.mu, rho, args.max_pops)
                        runs[which].append({"seconds": h["seconds"], "pops": h["pops"]})
                    else:
                        runs[which].append(time_torch_heap(spec, rho, args.max_pops))
            ours_s = median(x["seconds"] for x in runs["ours"])
            row = {"bench": "select", "spectrum": name, "rho": rho, "m": args.m, "n": args.n,
                   "kept": kept, "kept_fraction": kept / (args.m * args.n),
                   "ours_s": ours_s}  # fmt: skip
            for heap in ("heap_python", "heap_torch"):
                rate = median(x["seconds"] / max(x["pops"], 1) for x in runs[heap])
                pops = runs[heap][0]["pops"]
                est = rate * kept
                row.update({f"{heap}_us_per_pop": 1e6 * rate, f"{heap}_s": est,
                            f"{heap}_extrapolated": pops < kept,
                            f"ratio_{heap}_vs_ours": est / ours_s})  # fmt: skip
            emit(**row, repeats=args.repeats, max_pops=args.max_pops)


if __name__ == "__main__":
    main()
