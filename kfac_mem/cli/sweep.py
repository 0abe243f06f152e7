"""`kfac-mem sweep`: choose an edit on a memorized train set by a rule, report it on held-out sets.

  kfac-mem sweep --model M --eigen runs/eigen --train mined/train.jsonl \\
      --heldout val=mined/validation.jsonl [--heldout quotes=ood.jsonl] [--text coqa] \\
      --layer-sets 23-25,27-29 --projection-sets gate+up,gate+up+down --rhos 0.6,0.8,0.9 \\
      --max-perplexity-ratio 1.3 --controls svd,random --out runs/sweep \\
      [--write-edit runs/edited] [--export-hf runs/edited-hf]

The grid is every layer set × projection set × ρ:
  --layer-sets       comma-separated sets; a set is a layer (5), a range (1-3, inclusive) or
                     several joined by + (1+3, 1-3+7). "1-3,2-3" = two sets: {1,2,3} and {2,3}
  --projection-sets  comma-separated sets of projections joined by +: "gate+up,gate+up+down"
  --rhos             ρ values, the fraction of curvature mass kept per matrix, in (0, 1]
Each cell is applied to the model in memory (no checkpoint per cell) and measured on the train
set (greedy recitation, strict and loose with Wilson 95% intervals) and on the perplexity text.
The rule: the lowest train strict recitation, ties broken by lower perplexity, among cells whose
perplexity is at most --max-perplexity-ratio × the unedited model's (none meeting it: the
closest). Controls at the chosen cell: svd = truncation of the same matrices at the drop fraction
(of --svd-drops) whose perplexity is closest to the chosen edit's; random = the same kept set in
random orthogonal bases. The unedited model, the chosen edit and each control are then measured
on every --heldout set, with exact McNemar tests of the chosen edit against each on the same
examples. Writes --out/results.json, report.md and config.yaml (docs/design.md §5.9).
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
    parse_named,
    path_inputs,
    write_resolved_config,
)
from kfac_mem.errors import InputError


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        name,
        help="sweep layers x projections x ρ, choose by a rule, report held-out with controls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(p)
    p.add_argument("--eigen", required=True, help="eigen run directory (`kfac-mem decompose`)")
    p.add_argument(
        "--train",
        required=True,
        metavar="FILE.jsonl",
        help="memorized train set: jsonl rows with prefix_ids, suffix_ids (the choice sees only it)",
    )
    p.add_argument(
        "--heldout",
        action="append",
        default=[],
        metavar="NAME=FILE.jsonl",
        help="held-out memorized set, reported after the choice; repeatable",
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="SRC",
        help="held-out text for perplexity: .txt, .jsonl[.gz] (field --text-field), .npy [N, L] "
        "token ids, or a bundled corpus (coqa, lambada); repeatable; default coqa (no demo "
        "trains on it)",
    )
    p.add_argument("--text-field", default="text", help="jsonl field holding the text")
    p.add_argument("--window", type=int, default=128, help="tokens per perplexity window")
    p.add_argument(
        "--text-windows",
        type=int,
        default=128,
        help="at most N perplexity windows (default 128; 0 = all)",
    )
    p.add_argument("--limit", type=int, default=None, help="at most N rows per memorized set")
    g = p.add_argument_group("grid, rule and controls")
    g.add_argument("--layer-sets", required=True, help="e.g. 1-3,2-3 or 23-25,27-29 or 1+3")
    g.add_argument(
        "--projection-sets", default="gate+up", help="e.g. gate+up,gate+up+down (default gate+up)"
    )
    g.add_argument("--rhos", required=True, help="ρ values in (0, 1], e.g. 0.6,0.8,0.9")
    g.add_argument(
        "--max-perplexity-ratio",
        type=float,
        default=1.3,
        help="the chosen cell's perplexity is at most this times the unedited model's "
        "(default 1.3; inf: no limit)",
    )
    g.add_argument("--controls", default="svd,random", help="svd, random, both (default) or none")
    g.add_argument(
        "--svd-drops",
        default="0.05,0.1,0.25,0.5,0.75,0.9",
        help="SVD drop fractions in [0, 1) searched for the perplexity-matched control",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the random-basis control")
    g.add_argument("--batch-size", type=int, default=32, help="rows per forward (default 32)")
    o = p.add_argument_group("outputs")
    o.add_argument("--out", required=True, metavar="DIR", help="the sweep directory")
    o.add_argument(
        "--write-edit", default=None, metavar="DIR", help="write the chosen edit (Orbax model)"
    )
    o.add_argument(
        "--export-hf", default=None, metavar="DIR", help="write the chosen edit as an HF checkpoint"
    )
    o.add_argument("--export-dtype", default=None, help="dtype of the HF export (default: params')")
    o.add_argument(
        "--overwrite", action="store_true", help="replace earlier outputs of the same kinds"
    )
    add_mesh_flags(p)
    p.set_defaults(run=run)
    return p


def parse_layer_sets(text: str) -> list[tuple[int, ...]]:
    """ "1-3,2-3" -> [(1, 2, 3), (2, 3)]; "1+3,5" -> [(1, 3), (5,)]."""
    sets = []
    for part in (x.strip() for x in str(text).split(",")):
        if not part:
            continue
        layers: list[int] = []
        try:
            for piece in part.split("+"):
                lo, sep, hi = piece.strip().partition("-")
                layers += range(int(lo), int(hi) + 1) if sep else [int(lo)]
        except ValueError:
            raise InputError(
                f"--layer-sets expects comma-separated sets such as 1-3,2-3 or 1+3, got {text!r}."
            ) from None
        if not layers:
            raise InputError(f"--layer-sets: the set {part!r} names no layer (is it hi-lo?).")
        sets.append(tuple(sorted(set(layers))))
    return sets


def parse_projection_sets(text: str) -> list[tuple[str, ...]]:
    """ "gate+up,gate+up+down" -> [("gate", "up"), ("gate", "up", "down")]."""
    return [
        tuple(p.strip() for p in part.split("+") if p.strip())
        for part in str(text).split(",")
        if part.strip()
    ]


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} expects comma-separated numbers, got {text!r}.") from None


def run(args: argparse.Namespace) -> int:
    from kfac_mem.cli import flag_message
    from kfac_mem.decomposition.store import load_eigen
    from kfac_mem.evaluation.io import read_memorized
    from kfac_mem.experiments.memorization import (
        MemorizationSweep,
        format_summary,
        run_memorization_sweep,
    )
    from kfac_mem.rundir import check_output, claim

    inputs = path_inputs(args)
    controls = [c.strip() for c in args.controls.split(",") if c.strip() not in ("", "none")]
    spec = MemorizationSweep(  # grid and rule errors before anything is loaded
        layer_sets=tuple(parse_layer_sets(args.layer_sets)),
        projection_sets=tuple(parse_projection_sets(args.projection_sets)),
        rhos=tuple(parse_floats(args.rhos, "--rhos")),
        max_perplexity_ratio=args.max_perplexity_ratio,
        controls=tuple(controls),
        svd_drops=tuple(parse_floats(args.svd_drops, "--svd-drops")),
        seed=args.seed,
        batch_size=args.batch_size,
    )
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}.")
    if args.text_windows < 0:
        raise InputError(f"--text-windows must be >= 0 (0 = all), got {args.text_windows}.")
    heldout = parse_named(args.heldout, "--heldout")
    if not os.path.isfile(args.train):
        raise FileNotFoundError(f"--train {args.train}: no such file.")
    for path in (args.train, *heldout.values()):
        read_memorized(path)  # a malformed file fails before the model is loaded
    own = {"overwrite": args.overwrite, "replace_needs_overwrite": True}
    check_output(args.out, "sweep", inputs=inputs, **own)
    init_distributed(args)
    eigen = load_eigen(args.eigen)
    mesh, rules = mesh_from_args(args)
    model = load_model(args, mesh, rules)

    def warn(message: str) -> None:
        print(f"kfac-mem sweep: warning: {flag_message(message, 'sweep', args)}", file=sys.stderr)

    with claim(args.out, "sweep", inputs=inputs, **own):  # nothing stays if a check fails
        results = run_memorization_sweep(
            model,
            eigen,
            spec,
            train=args.train,
            heldout=heldout,
            texts=args.text or None,
            window=args.window,
            text_windows=args.text_windows or None,
            text_field=args.text_field,
            limit=args.limit,
            out_dir=args.out,
            edit_dir=args.write_edit,
            hf_dir=args.export_hf,
            export_dtype=args.export_dtype,
            overwrite=args.overwrite,
            inputs=inputs,
            warn=warn,
        )
        write_resolved_config(args.out, "sweep", args, extra={"spec": spec.to_json()})
    print(format_summary(results))
    print(f"wrote {os.path.join(args.out, 'results.json')} and report.md")
    return 0
