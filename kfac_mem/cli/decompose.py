"""`kfac-mem decompose`: eigenbases of every A and G of a factor run, stacked and sharded.

  kfac-mem decompose --factors runs/factors --out runs/eigen [--precision float64]

Same-size factors are stacked on the `factor_stack` axis, padded with identities to a multiple of
the devices that axis spans, and decomposed with a vmapped eigh (each device solves whole
matrices; no all-gather). The eigen run is reused by every later `kfac-mem edit` (a ρ sweep never
repeats an eigendecomposition).
"""

from __future__ import annotations

import argparse

from kfac_mem.cli.common import (
    add_mesh_flags,
    init_distributed,
    mesh_from_args,
    path_inputs,
    write_resolved_config,
)


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help="eigendecompose the K-FAC factors of a factor run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--factors", required=True, help="factor run directory (`kfac-mem collect --out`)"
    )
    p.add_argument("--out", required=True, help="eigen run directory to write")
    p.add_argument(
        "--precision",
        choices=("float32", "float64"),
        default="float32",
        help="eigh precision; float64 resolves eigenvalues below ~1e-6·λmax "
        "(not on TPU). Default float32",
    )
    p.add_argument(
        "--layer-ids",
        default=None,
        help="comma-separated HF layer ids to decompose (default: every collected layer)",
    )
    p.add_argument(
        "--chunk-mib",
        type=int,
        default=512,
        help="per-device MiB of one stacked chunk (bounds memory; default 512)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing eigen run in --out"
    )
    add_mesh_flags(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    init_distributed(args)
    from kfac_mem.collection.store import load_factors
    from kfac_mem.decomposition.store import decompose_run
    from kfac_mem.rundir import check_output, claim

    inputs = path_inputs(args)
    check_output(
        args.out, "eigen", inputs=inputs, overwrite=args.overwrite, replace_needs_overwrite=True
    )
    factors = load_factors(args.factors)
    mesh, rules = mesh_from_args(args)
    ids = [s.strip() for s in args.layer_ids.split(",") if s.strip()] if args.layer_ids else None
    _ = factors.sums  # read (and check) every factor before the output directory is claimed
    with claim(
        args.out, "eigen", inputs=inputs, overwrite=args.overwrite, replace_needs_overwrite=True
    ):
        eigen = decompose_run(
            factors,
            args.out,
            mesh,
            rules,
            precision=args.precision,
            site_ids=ids,
            chunk_bytes=args.chunk_mib << 20,
            overwrite=args.overwrite,
        )
        write_resolved_config(
            eigen.directory, "decompose", args, extra={"factor_run": eigen.factor_run}
        )
    meta = eigen.metadata
    print(
        f"decomposed {len(meta['entries'])} factors of {len(meta['sites'])} layers "
        f"({args.precision}) in {len(meta['chunks'])} stacked chunks over "
        f"{meta['stack_shards']} device(s) -> {eigen.directory}"
    )
    return 0
