"""Benchmark: stacked sharded eigh (`kfac_mem.decomposition.eigh.stacked_eigh`) against scipy.linalg.eigh on the
same matrices (goal: within 1.1× of scipy).

Repeats are interleaved across the three implementations and the best of each is kept.

For each size d, a stack of k random SPD matrices is decomposed by `stacked_eigh` (jit + vmap,
stack sharded on `factor_stack` over the mesh; compile excluded, best of --repeats) and by a loop
of scipy.linalg.eigh with the divide-and-conquer driver (`evd`, LAPACK syevd/dsyevd: what jnp uses
on CPU) and with scipy's default driver (`evr`). One JSON line per (d, k, dtype).

  python benchmarks/bench_eigh.py [--sizes 512,1024,2048,4096] [--k 4] [--dtype float32]
      [--devices N]   # N simulated CPU devices (sets XLA_FLAGS before JAX starts)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1024,2048,4096")
    ap.add_argument("--k", type=int, default=4, help="matrices per stack")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--devices",
        type=int,
        default=None,
        help="simulate this many CPU devices (default: the real device count)",
    )
    return ap.parse_args()


def best(fn, repeats: int) -> float:
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def main() -> None:
    args = parse()
    if args.devices:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        )
    import jax
    import numpy as np
    import scipy.linalg

    from kfac_mem.decomposition.eigh import precision_scope, stacked_eigh
    from kfac_mem.sharding import make_mesh

    mesh, rules = make_mesh("data")
    machine = {
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "scipy": scipy.__version__,
        "python": sys.version.split()[0],
    }
    rng = np.random.default_rng(0)
    with precision_scope(args.dtype) as dtype:
        for d in (int(x) for x in args.sizes.split(",")):
            x = rng.standard_normal((args.k, d, d + 16)).astype(dtype)
            stack = np.einsum("kij,klj->kil", x, x) / d  # SPD, like a factor

            def run_jnp(stack=stack):
                w, u = stacked_eigh(stack, mesh, rules)
                jax.block_until_ready((w, u))

            run_jnp()  # compile
            runs = {
                "jnp": run_jnp,
                "evd": lambda stack=stack: [scipy.linalg.eigh(m, driver="evd") for m in stack],
                "evr": lambda stack=stack: [scipy.linalg.eigh(m) for m in stack],
            }
            # Interleaved repeats (jnp, evd, evr, jnp, ...) so load drift hits all alike.
            times = {name: float("inf") for name in runs}
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    times[name] = min(times[name], best(fn, 1))
            t_jnp, t_evd, t_evr = times["jnp"], times["evd"], times["evr"]
            w, _ = stacked_eigh(stack, mesh, rules)
            ref = np.linalg.eigvalsh(stack[0].astype(np.float64))[::-1]
            err = float(np.abs(np.asarray(w)[0] - ref).max() / ref[0])
            print(
                json.dumps(
                    {
                        "bench": "eigh",
                        "d": d,
                        "k": args.k,
                        "dtype": args.dtype,
                        "jnp_stacked_s": round(t_jnp, 4),
                        "scipy_evd_s": round(t_evd, 4),
                        "scipy_default_evr_s": round(t_evr, 4),
                        "ratio_vs_evd": round(t_jnp / t_evd, 3),
                        "ratio_vs_default": round(t_jnp / t_evr, 3),
                        "max_eigval_err_rel_lmax": err,
                        **machine,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    import json

    main()
