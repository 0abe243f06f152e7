"""`kfac-mem edit`: remove low-curvature components of chosen weights (or run a control).

  kfac-mem edit --model M --eigen runs/eigen --out runs/edited \
      --layers-json '{"23": {"gate": 0.6, "up": 0.6}}' [--export-hf runs/edited-hf]
  kfac-mem edit --model M --eigen runs/eigen --export-hf runs/edited-hf \
      --layers 23-25 --projections gate,up --rho 0.6          # HF checkpoint only, no Orbax copy
  kfac-mem edit --model M --out runs/svd --method svd --layers 23-25 --drop 0.5

Per matrix: keep the shortest descending-curvature prefix holding a fraction ρ of the curvature
mass (ρ ≥ 0.9999: untouched), W' = U_G((U_Gᵀ W U_A) ⊙ M)U_Aᵀ, cast back. Controls: --method svd
(--drop = fraction of bottom singular components dropped), band (value = [lo, hi] percent of
components ranked by curvature, removed), random (the same kept set in random orthogonal bases).
In --layers-json / --layers-file the value per matrix means the same: ρ, the drop fraction (svd),
or [lo, hi]. Writes the edited model (Orbax: --out, with report.json and config.yaml) and/or an
HF checkpoint (--export-hf; without --out it also holds report.json and config.yaml).

The printed table: "kept mass" = share of curvature mass (kfac, band) or of squared singular
values (svd) kept; "kept comps" of "of" = rank-one components kept out of all (d_out·d_in, or
min(d_out, d_in) singular components for svd); "kept share" = their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys

from kfac_mem.cli.common import (
    add_mesh_flags,
    add_model_flags,
    init_distributed,
    load_model,
    mesh_from_args,
    model_output_dir,
    parse_layer_selection,
    write_model_outputs,
)


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    from kfac_mem.decomposition.eigh import PRECISIONS
    from kfac_mem.editing.apply import EIGENVALUE_SOURCES, EditOptions
    from kfac_mem.editing.plan import METHODS

    d = EditOptions()  # the library's defaults, not retyped here
    p = subparsers.add_parser(
        name,
        help="edit weights by K-FAC curvature mass (or a control)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(p)
    p.add_argument(
        "--eigen",
        default=None,
        help="eigen run directory (`kfac-mem decompose --out`); not needed for svd",
    )
    p.add_argument(
        "--out",
        default=None,
        help="directory for the edited model (Orbax) + report; optional with --export-hf",
    )
    p.add_argument(
        "--export-hf",
        default=None,
        metavar="DIR",
        help="write an HF checkpoint directory (config.json + model.safetensors + tokenizer.json); "
        "with --out as well as the Orbax copy, without --out instead of it",
    )
    p.add_argument(
        "--export-dtype",
        default=None,
        help="dtype of the HF export (default: the parameters' dtype)",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--layers-json",
        default=None,
        help='per-matrix values, e.g. \'{"23": {"gate": 0.6, "up": 0.6}}\' '
        "(a missing projection is untouched)",
    )
    g.add_argument("--layers-file", default=None, help="the same mapping in a JSON or YAML file")
    g.add_argument(
        "--layers",
        default=None,
        help="short form: layer indices (23,24 or 23-25) with --projections and --rho "
        "(or --drop for --method svd)",
    )
    p.add_argument(
        "--projections",
        default="gate,up",
        help="with --layers: projections to edit (default gate,up)",
    )
    p.add_argument(
        "--rho",
        default=None,
        help="with --layers: ρ, the fraction of curvature mass kept in every matrix, in (0, 1] "
        "(kfac, random); or lo,hi percent of components removed (band, random)",
    )
    p.add_argument(
        "--drop",
        type=float,
        default=None,
        help="with --layers and --method svd: the fraction of singular components dropped from "
        "every matrix, in [0, 1) (0.5 drops the bottom half)",
    )
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument(
        "--eigenvalues",
        choices=EIGENVALUE_SOURCES,
        default=d.eigenvalues,
        help="curvature per component: λ_i μ_j (kfac) or EK-FAC corrected eigenvalues "
        "(ekfac; needs --ekfac)",
    )
    p.add_argument(
        "--ekfac",
        default=None,
        metavar="ANALYSIS_DIR",
        help="with --eigenvalues ekfac: the `kfac-mem analyze --out` directory holding the "
        "corrected eigenvalues (computed against --eigen)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help=f"working precision of the reconstruction (default {d.precision})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the random-basis control")
    p.add_argument(
        "--no-rank",
        action="store_true",
        help="skip the numerical rank of each edited matrix (one SVD each)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in --out")
    add_mesh_flags(p)
    p.set_defaults(run=run)
    return p


def _plan(args: argparse.Namespace, model):
    from kfac_mem.editing.plan import plan_from_file, plan_from_flags, plan_from_json

    sites = model.linear_sites()
    if args.layers_json is not None:
        return plan_from_json(args.layers_json, sites)
    if args.layers_file is not None:
        return plan_from_file(args.layers_file, sites)
    if args.method == "svd":
        if args.drop is None:
            raise ValueError(
                "--method svd with --layers needs --drop (the fraction of singular components "
                "dropped, in [0, 1))."
            )
        layers, projs = parse_layer_selection(
            args.layers, args.projections, model.config.num_layers, ("gate", "up")
        )
        return plan_from_flags(layers, projs, float(args.drop), sites)
    if args.rho is None:
        raise ValueError("--layers needs --rho (the value for every listed matrix).")
    try:
        parts = [float(x) for x in str(args.rho).split(",")]
    except ValueError:
        raise ValueError(
            f"--rho expects a number or lo,hi (e.g. 0.6 or 10,20), got {args.rho!r}."
        ) from None
    value = parts[0] if len(parts) == 1 else tuple(parts)
    layers, projs = parse_layer_selection(
        args.layers, args.projections, model.config.num_layers, ("gate", "up")
    )
    return plan_from_flags(layers, projs, value, sites)


def run(args: argparse.Namespace) -> int:
    init_distributed(args)
    from kfac_mem.decomposition.store import load_eigen
    from kfac_mem.editing.apply import EditOptions
    from kfac_mem.editing.record import edit_model
    from kfac_mem.editing.report import format_table

    out = model_output_dir(args)
    if args.method == "svd" and args.rho is not None:
        raise ValueError(
            "--method svd takes --drop (the fraction of singular components dropped, e.g. "
            "--drop 0.5), not --rho (the fraction of curvature mass kept)."
        )
    if args.drop is not None and args.method != "svd":
        raise ValueError(
            f"--drop is the SVD control's knob (--method svd); --method {args.method} takes --rho."
        )
    if args.drop is not None and args.layers is None:
        raise ValueError(
            "--drop goes with --layers (short form); in --layers-json / --layers-file the value "
            "per matrix is the drop fraction itself."
        )
    if args.method != "svd" and not args.eigen:
        raise ValueError(f"--method {args.method} needs --eigen (run `kfac-mem decompose` first).")
    eigen = load_eigen(args.eigen) if args.eigen else None
    ekfac_info = None
    if args.eigenvalues == "ekfac":
        if not args.ekfac:
            raise ValueError(
                "--eigenvalues ekfac needs --ekfac ANALYSIS_DIR (the output of `kfac-mem analyze` "
                "against --eigen)."
            )
        ekfac_info = eigen.use_corrected(args.ekfac)
        print(
            f"EK-FAC eigenvalues from {eigen.ekfac_directory}: sets "
            f"{ekfac_info.get('sets')} (fingerprints {ekfac_info.get('set_fingerprints')}), "
            f"{ekfac_info.get('positions')} loss positions, {ekfac_info.get('mode')} labels, "
            f"model {ekfac_info.get('model_fingerprint')}"
        )
    elif args.ekfac:
        raise ValueError("--ekfac is used only with --eigenvalues ekfac.")
    mesh, rules = mesh_from_args(args)
    model = load_model(args, mesh, rules)
    plan = _plan(args, model)
    options = EditOptions(
        method=args.method,
        eigenvalues=args.eigenvalues,
        precision=args.precision,
        seed=args.seed,
        compute_rank=not args.no_rank,
    )
    result = edit_model(model, eigen, plan, options, ekfac_info)
    if result.record["warning"]:
        print(f"kfac-mem edit: warning: {result.record['warning']}", file=sys.stderr)
    write_model_outputs(
        result.model,
        out,
        args,
        result.metadata,
        result.record,
        "edit",
        extra={"plan": plan.to_json()},
    )
    rows = result.record["matrices"]
    print(format_table(rows))
    where = [out] if out else []
    if args.export_hf:
        where.append(f"HF: {os.path.abspath(args.export_hf)}")
    print(
        f"edited {sum(not r.get('untouched') for r in rows)} of {len(rows)} planned matrices "
        f"-> {', '.join(where)}"
    )
    return 0
