"""`kfac-mem analyze`: where memorized and shared structure live in the curvature spectrum.

  kfac-mem analyze --model M --eigen runs/eigen --set memorized=mem.jsonl --set clean=held.txt \
      [--clean clean] [--layers 23,24 --projections gate,up] [--mode sampled|empirical] \
      [--rho 0.6,0.8] [--top-k 32] --out runs/analysis

A separate stage reading only the model checkpoint, the eigen run and example sets (jsonl windows
from `kfac-mem mine`, text files cut into windows with the model's tokenizer, or .npy token
windows). Measures the population spectra and ρ cuts, per-example curvature in the K-FAC eigenbasis
(total, sharpness, participation ratio, band split, idiosyncrasy of top directions), activation
band strengths vs the clean set in the K-FAC and SVD bases (paper Fig. 2/4), EK-FAC corrected
eigenvalues (saved under --out, for `kfac-mem edit --eigenvalues ekfac --ekfac OUT`) and band
ablation.
Writes report.md, report.json, figures/*.png, arrays/ (tensorstore zarr) and config.yaml.
"""

from __future__ import annotations

import argparse
import os

from kfac_mem.cli.common import (
    add_mesh_flags,
    add_model_flags,
    init_distributed,
    load_model,
    mesh_from_args,
    parse_layer_selection,
    path_inputs,
    write_resolved_config,
)


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    from kfac_mem.analysis.options import MODES, POSITIONS, SCOPES, AnalyzeOptions

    d = AnalyzeOptions()  # the library's defaults, not retyped here
    p = subparsers.add_parser(
        name,
        help="sharp-vs-flat direction analysis of memorized vs clean examples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(p)
    p.add_argument(
        "--eigen", required=True, help="eigen run directory (`kfac-mem decompose --out`)"
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="an example set: jsonl windows (`kfac-mem mine`), text (.txt / jsonl with `text`), "
        "or .npy token windows [N, L] (repeatable)",
    )
    p.add_argument("--clean", default=None, help="reference set (default: the set named `clean`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--layers",
        default=None,
        help="layer ids (model.layers.3.mlp.up_proj,...) or indices (23,24 or 23-25); "
        "default: every layer of the eigen run",
    )
    p.add_argument("--projections", default=None, help="with layer indices: e.g. gate,up")
    p.add_argument(
        "--mode",
        choices=MODES,
        default=d.mode,
        help=f"labels of the per-example gradients (default {d.mode}; sampled: true Fisher)",
    )
    p.add_argument(
        "--rho",
        default=",".join(map(str, d.rhos)),
        help="ρ values whose spectrum cut is reported",
    )
    p.add_argument(
        "--top-k", type=int, default=d.top_k, help=f"top directions per example ({d.top_k})"
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"examples per step ({d.batch_size})"
    )
    p.add_argument(
        "--positions",
        choices=POSITIONS,
        default=d.positions,
        help="which positions' loss counts (suffix: windows from `mine` only)",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="window length for text sets (default: that of the window sets, else 128)",
    )
    p.add_argument("--max-examples", type=int, default=None, help="cap on examples per set")
    p.add_argument(
        "--row-chunk",
        type=int,
        default=None,
        help="rows of Γ̃ formed at once (default: fit --chunk-mb per device)",
    )
    p.add_argument(
        "--chunk-mb",
        type=int,
        default=d.chunk_bytes >> 20,
        help="per-device memory for one block (MiB)",
    )
    p.add_argument("--vocab-chunk", type=int, default=d.vocab_chunk)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-svd", action="store_true", help="skip the SVD-basis activation strengths")
    p.add_argument(
        "--no-ekfac",
        action="store_true",
        help="do not compute EK-FAC corrected eigenvalues (saved under --out otherwise)",
    )
    p.add_argument(
        "--ekfac-sets",
        default=None,
        help="sets averaged into the EK-FAC eigenvalues (default: the clean set only; a "
        "memorized set enters them only when named here)",
    )
    p.add_argument(
        "--ablation",
        choices=SCOPES,
        default=d.ablation,
        help="band ablation: from all analyzed layers at once, one layer at a time, or none",
    )
    p.add_argument(
        "--no-ablation-control",
        action="store_true",
        help="skip the random-basis control of the band ablation",
    )
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    p.add_argument("--no-progress", action="store_true")
    add_mesh_flags(p)
    p.set_defaults(run=run)
    return p


def _site_ids(args: argparse.Namespace, model, eigen) -> list[str] | None:
    if args.layers in (None, "", "all") and not args.projections:
        return None
    from kfac_mem.collection.sites import select_sites

    sites = model.linear_sites()
    if args.layers and any(part.strip().startswith("model.") for part in args.layers.split(",")):
        return [p.strip() for p in args.layers.split(",") if p.strip()]
    layers, projs = parse_layer_selection(
        args.layers, args.projections, model.config.num_layers, ()
    )
    if not projs:  # no --projections: every decomposed projection of those layers
        chosen = [s.id for s in sites if s.layer in set(layers) and s.id in eigen.sites]
        if not chosen:
            raise ValueError(
                f"--layers {args.layers}: none of these layers is in the eigen run "
                f"{eigen.directory} (it has {sorted(eigen.sites)})."
            )
        return chosen
    return [s.id for s in select_sites(sites, layers=layers, projections=projs)]


def run(args: argparse.Namespace) -> int:
    init_distributed(args)
    from kfac_mem.analysis import AnalyzeOptions, analyze
    from kfac_mem.analysis.sets import parse_set_flag
    from kfac_mem.decomposition.store import load_eigen

    sets: dict[str, str] = {}
    for item in args.sets:
        name, path = parse_set_flag(item)
        if name in sets:
            raise ValueError(f"--set {name} is given twice; set names must be unique.")
        sets[name] = path
    try:
        rhos = tuple(float(x) for x in str(args.rho).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--rho expects comma-separated numbers, got {args.rho!r}.") from None
    options = AnalyzeOptions(
        mode=args.mode,
        seed=args.seed,
        batch_size=args.batch_size,
        top_k=args.top_k,
        rhos=rhos,
        positions=args.positions,
        seq_len=args.seq_len,
        max_examples=args.max_examples,
        row_chunk=args.row_chunk,
        chunk_bytes=args.chunk_mb << 20,
        vocab_chunk=args.vocab_chunk,
        svd=not args.no_svd,
        ekfac=not args.no_ekfac,
        ekfac_sets=tuple(s.strip() for s in args.ekfac_sets.split(","))
        if args.ekfac_sets
        else None,
        ablation=args.ablation,
        ablation_control=not args.no_ablation_control,
        eval_batch_size=args.eval_batch_size,
        figures=not args.no_figures,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    from kfac_mem.rundir import check_output, claim

    inputs = path_inputs(args)
    own = dict(overwrite=args.overwrite, replace_needs_overwrite=True)
    out = check_output(args.out, "analysis", inputs=inputs, **own)
    eigen = load_eigen(args.eigen)
    mesh, rules = mesh_from_args(args)
    model = load_model(args, mesh, rules)
    site_ids = _site_ids(args, model, eigen)
    with claim(out, "analysis", inputs=inputs, **own):
        report = analyze(
            model, eigen, sets, out_dir=out, clean=args.clean, options=options, site_ids=site_ids
        )
        write_resolved_config(out, "analyze", args, extra={"layers": report["layers"]})
    for f in report["findings"]:
        print(
            f"{f['set']} vs {f['versus']}: {f['claim']}: agrees in {f.get('agrees_in', 0)}, "
            f"contradicts in {f.get('contradicts_in', 0)} of {f['of']} matrices -> {f['verdict']}"
        )
    print(f"report: {os.path.join(out, 'report.md')}")
    return 0
