"""Benchmark: curvature-mass selection + reconstruction of one 7B-sized MLP matrix, excluding eigh.

W is 11008×4096 (OLMo-2 7B gate/up: d_out = 11008, d_in = 4096); U_G is 11008², U_A 4096²
(orthonormal DCT bases with random signs: matmul cost does not depend on the values). λ, μ are
synthetic power-law spectra, named by exponent (λ_i ∝ i^-a, μ_j ∝ j^-b, μ_0 boosted by an
outlier factor like the dominant direction of an uncentered A). Each config prints one JSON line:
selection and reconstruction seconds, kept fraction, the chosen arms and their estimated flops
against the dense 4·m·n·(m+n). A dense-product baseline and the authors' Python heap walk
(best-first over the outer product, one pop per kept component, cumulative sum in Python floats)
are timed too; the heap is run to --heap-max-pops and extrapolated by its per-pop rate.

  python benchmarks/bench_edit.py [--quick] [--dtype float32] [--heap-max-pops 2000000]
"""

from __future__ import annotations

import argparse
import heapq
import json
import platform
import time

import jax
import numpy as np
import scipy.fft

from kfac_mem.decomposition.eigh import precision_scope
from kfac_mem.editing.reconstruct import masked_product, staircase_plan
from kfac_mem.editing.selection import Selection, Spectrum, select_mass

SPECTRA = {
    # name: (a, b, outlier)
    "hyperbolic(1,1)": (1.0, 1.0, 0.0),
    "small-model-like(0.8,0.6,+20)": (0.8, 0.6, 20.0),
    "flat(0.5,0.5)": (0.5, 0.5, 0.0),
}


def basis(d: int, rng: np.random.Generator, dtype) -> np.ndarray:
    """An orthonormal [d, d] matrix (DCT-II with random column signs)."""
    u = scipy.fft.dct(np.eye(d, dtype=np.float64), norm="ortho", axis=0)
    return (u * rng.choice([-1.0, 1.0], d)).astype(dtype)


def spectrum(m: int, n: int, a: float, b: float, outlier: float) -> Spectrum:
    lam = np.arange(1, m + 1, dtype=np.float64) ** -a
    mu = np.arange(1, n + 1, dtype=np.float64) ** -b
    mu[0] *= 1 + outlier
    return Spectrum.kronecker(lam, mu)


def heap_walk(lam: np.ndarray, mu: np.ndarray, rho: float, max_pops: int) -> dict:
    """The reference release's selection: best-first heap over λ_i μ_j (ties: smaller i, j),
    adding pairs while the running Python-float sum < ρ·(Σλ)(Σμ), then a boolean mask from the
    popped index lists. Stops after `max_pops` pops. Fed the same float64 spectra as ours."""
    lam_l, mu_l = [float(x) for x in lam], [float(x) for x in mu]
    m, n = len(lam_l), len(mu_l)
    target = rho * (float(lam.sum()) * float(mu.sum()))
    heap = [(-lam_l[0] * mu_l[0], 0, 0)]
    seen = {(0, 0)}
    idx_i, idx_j = [], []
    cum = 0.0
    t0 = time.perf_counter()
    while cum < target and heap and len(idx_i) < max_pops:
        p, i, j = heapq.heappop(heap)
        cum += -p
        idx_i.append(i)
        idx_j.append(j)
        if i + 1 < m and (i + 1, j) not in seen:
            seen.add((i + 1, j))
            heapq.heappush(heap, (-lam_l[i + 1] * mu_l[j], i + 1, j))
        if j + 1 < n and (i, j + 1) not in seen:
            seen.add((i, j + 1))
            heapq.heappush(heap, (-lam_l[i] * mu_l[j + 1], i, j + 1))
    mask = np.zeros((m, n), bool)
    mask[idx_i, idx_j] = True
    return {
        "pops": len(idx_i),
        "seconds": time.perf_counter() - t0,
        "done": cum >= target,
        "kept_mass": float(cum),
    }


def timed(fn, repeats: int):
    """(first call's seconds (with compilation), best of `repeats`, result)."""
    first, best, out = None, float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        t = time.perf_counter() - t0
        first = t if first is None else first
        best = min(best, t)
    return first, best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=11008)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rhos", default="0.6,0.8,0.9")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--repeats", type=int, default=2, help="best of; the first includes compile")
    ap.add_argument("--quick", action="store_true", help="ρ = 0.6 only, no dense baseline")
    ap.add_argument("--heap-max-pops", type=int, default=2_000_000)
    args = ap.parse_args()
    m, n = args.m, args.n
    rhos = [0.6] if args.quick else [float(r) for r in args.rhos.split(",")]
    machine = {
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.platform(),
        "cpus": __import__("os").cpu_count(),
        "jax": jax.__version__,
    }
    rng = np.random.default_rng(0)
    with precision_scope(args.dtype) as dtype:
        u_g, u_a = basis(m, rng, dtype), basis(n, rng, dtype)
        w = (rng.standard_normal((m, n)) * 0.02).astype(np.float32)
        masked_product(
            w[:64, :64],
            u_g[:64, :64],
            u_a[:64, :64],
            select_mass(spectrum(64, 64, 1, 1, 0), 0.6),
            dtype,
        )  # warm the runtime
        if not args.quick:
            full = Selection((m, n), mask=np.ones((m, n), bool))
            _, t, _ = timed(lambda: masked_product(w, u_g, u_a, full, dtype, path="dense"), 1)
            print(
                json.dumps(
                    {
                        "bench": "edit-dense-baseline",
                        "m": m,
                        "n": n,
                        "dtype": args.dtype,
                        "reconstruct_s": round(t, 3),
                        **machine,
                    }
                ),
                flush=True,
            )
        for name, (a, b, outlier) in SPECTRA.items():
            spec = spectrum(m, n, a, b, outlier)
            for rho in rhos:
                _, t_sel, sel = timed(
                    lambda spec=spec, rho=rho: select_mass(spec, rho), args.repeats
                )
                plan = staircase_plan(sel.staircases[0][1], n)
                t_first, t_rec, _ = timed(
                    lambda sel=sel: masked_product(w, u_g, u_a, sel, dtype, path="staircase"),
                    args.repeats,
                )
                print(
                    json.dumps(
                        {
                            "bench": "edit-kfac",
                            "m": m,
                            "n": n,
                            "spectrum": name,
                            "rho": rho,
                            "dtype": args.dtype,
                            "kept": sel.kept,
                            "kept_components_fraction": round(sel.kept / (m * n), 5),
                            "select_s": round(t_sel, 3),
                            "reconstruct_s": round(t_rec, 3),
                            "total_s": round(t_sel + t_rec, 3),
                            "first_call_total_s": round(t_sel + t_first, 3),
                            "complement": plan["complement"],
                            "split_rows": plan["s"],
                            "blocks": [len(plan["blocks1"]), len(plan["blocks2"])],
                            "est_flops_vs_dense": round(plan["flops"] / plan["dense_flops"], 3),
                            "repeats": args.repeats,
                            **machine,
                        }
                    ),
                    flush=True,
                )
                h = heap_walk(spec.lam, spec.mu, rho, args.heap_max_pops)
                rate = h["seconds"] / max(h["pops"], 1)
                print(
                    json.dumps(
                        {
                            "bench": "edit-heap-reference",
                            "m": m,
                            "n": n,
                            "spectrum": name,
                            "rho": rho,
                            "pops_run": h["pops"],
                            "completed": h["done"],
                            "kept_needed": sel.kept,
                            "seconds_run": round(h["seconds"], 3),
                            "us_per_pop": round(1e6 * rate, 3),
                            "extrapolated_s": round(rate * sel.kept, 1),
                            "kept_mass_rel_diff": abs(h["kept_mass"] - sel.kept_mass)
                            / sel.total_mass
                            if h["done"]
                            else None,
                            **machine,
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
