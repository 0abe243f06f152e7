"""`kfac-mem compare`: K-FAC, SVD and BalancedSubnet at matched held-out perplexity (paper Table 1).

  kfac-mem compare --model M --eigen runs/eigen \\
      --train mined/train.jsonl --validation mined/validation.jsonl --ood quotes.jsonl \\
      --text heldout.jsonl --retain clean.jsonl --out runs/compare

Each method's knob (K-FAC ρ, SVD drop fraction, BSN pruned ratio) is searched per candidate
configuration until held-out perplexity is within ±tolerance of the target (default 1.2 × the
unedited perplexity); among candidates the lowest strict recitation on --train wins (a method that
cannot reach the band is reported as unmatched). The chosen settings are evaluated on every set
(strict / loose / mean d/L), with perplexity, nDCG@10 against the unedited model and time, then
stress-tested (prefix shifts; relearning on --retain). Writes results.json, comparison.md and
config.yaml to --out (and each chosen model with --save-models).

  kfac-mem compare ... --seeds 0-4 [--eigen 'runs/eigen-seed{seed}'] --out runs/compare

repeats the comparison per seed (BSN initialization and batch order, the relearning order; with
`{seed}` in --eigen, K-FAC on each seed's factors, collected with `kfac-mem collect --seed S`) into
OUT/seed-<s>/ and reports mean, sd and a 95% interval across seeds in OUT/seeds.md and seeds.json.
"""

from __future__ import annotations

import argparse
import os

from kfac_mem.cli.baseline import add_bsn_flags, add_retain_flags, bsn_config, retain_windows
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


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated numbers, got {text!r}.") from None
    if not values:
        raise ValueError(f"{flag} is empty; give at least one value.")
    return values


def _ints(text: str, flag: str) -> tuple[int, ...]:
    values = _floats(text, flag)
    if any(v != int(v) for v in values):
        raise ValueError(f"{flag} expects integers, got {text!r}.")
    return tuple(int(v) for v in values)


def parse_candidates(text: str | None, num_layers: int):
    """`23-25:gate,up;all:gate,up` -> EditCandidates (None: the defaults)."""
    from kfac_mem.baselines.compare import EditCandidate

    if not text:
        return None
    out = []
    for part in text.split(";"):
        layers, sep, projections = part.strip().partition(":")
        if not sep:
            raise ValueError(
                f"--candidates entry {part!r} must be LAYERS:PROJECTIONS, e.g. '23-25:gate,up'."
            )
        idx, projs = parse_layer_selection(layers, projections, num_layers, ("gate", "up"))
        out.append(EditCandidate(tuple(idx), tuple(projs)))
    return tuple(out)


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    from kfac_mem.baselines.compare import CompareOptions
    from kfac_mem.baselines.stress import SHIFT_MODES, StressOptions

    d, s = CompareOptions(), StressOptions()
    p = subparsers.add_parser(
        name,
        help="K-FAC vs SVD vs BalancedSubnet at matched perplexity (Table 1 + stress tests)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(p)
    p.add_argument("--eigen", default=None, help="eigen run of --model (needed for kfac)")
    g = p.add_argument_group("sets")
    g.add_argument(
        "--train",
        required=True,
        help="memorized train jsonl (BSN forget set, K-FAC/SVD tuning set)",
    )
    g.add_argument("--validation", required=True, help="memorized validation jsonl (reported)")
    g.add_argument("--ood", default=None, help="out-of-distribution memorized jsonl (quotes)")
    g.add_argument(
        "--text",
        action="append",
        required=True,
        metavar="SRC",
        help="held-out text (perplexity target, nDCG): .txt, .jsonl[.gz], .npy, or "
        "lambada; repeatable",
    )
    g.add_argument("--window", type=int, default=128, help="tokens per held-out text window")
    g.add_argument("--limit-text", type=int, default=None, help="at most N held-out windows")
    add_retain_flags(g, required=False)
    g = p.add_argument_group("matching")
    g.add_argument("--methods", default="kfac,svd,bsn", help="subset of kfac,svd,bsn")
    g.add_argument(
        "--target-perplexity",
        type=float,
        default=None,
        help="perplexity to match (default: --target-ratio × unedited)",
    )
    g.add_argument("--target-ratio", type=float, default=d.target_ratio)
    g.add_argument(
        "--tolerance",
        type=float,
        default=d.tolerance,
        help=f"relative band around the target (default {d.tolerance})",
    )
    g.add_argument("--refine", type=int, default=d.refine, help="bisection steps per candidate")
    g.add_argument(
        "--candidates",
        default=None,
        help="K-FAC/SVD configurations, e.g. '23-25:gate,up;all:gate,up' (default: "
        "a block at ≈72%% depth and all collected layers, gate+up)",
    )
    g.add_argument("--rhos", default=",".join(map(str, d.rhos)), help="K-FAC ρ grid, high first")
    g.add_argument("--svd-drops", default=",".join(map(str, d.svd_drops)))
    g.add_argument("--bsn-ratios", default=",".join(map(str, d.bsn_ratios)))
    g.add_argument("--bsn-loss-weights", default=",".join(map(str, d.bsn_loss_weights)))
    g.add_argument("--bsn-lrs", default=str(d.bsn.learning_rate), help="BSN learning rates")
    g.add_argument(
        "--bsn-projections",
        default="up,down",
        help="masked projection sets, ';'-separated, e.g. 'up,down;gate,up,down'",
    )
    add_bsn_flags(g, prefix="bsn-")
    g = p.add_argument_group("stress tests")
    g.add_argument("--no-stress", action="store_true", help="skip the stress tests")
    g.add_argument("--shifts", default=",".join(map(str, s.shifts)))
    g.add_argument("--shift-mode", choices=SHIFT_MODES, default=s.shift_mode)
    g.add_argument("--stress-sets", default=",".join(d.stress_sets))
    g.add_argument("--relearn-steps", type=int, default=s.relearn_steps, help="0: skip relearning")
    g.add_argument("--relearn-lr", type=float, default=s.relearn_learning_rate)
    g.add_argument("--relearn-batch-size", type=int, default=s.relearn_batch_size)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per evaluation batch")
    p.add_argument("--ndcg-windows", type=int, default=None, help="held-out windows for nDCG")
    p.add_argument(
        "--kfac-precompute-seconds",
        type=float,
        default=None,
        help="time of collect + decompose, reported beside K-FAC's edit time",
    )
    p.add_argument("--save-models", action="store_true", help="save each chosen model (Orbax)")
    p.add_argument(
        "--seeds",
        default=None,
        metavar="LIST",
        help="repeat per seed (e.g. 0-4): BSN init and order, relearning order, and with "
        "'{seed}' in --eigen each seed's eigen run; mean, sd and 95%% interval across seeds",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_mesh_flags(p)
    p.set_defaults(run=run)
    return p


def options_from_args(args: argparse.Namespace, num_layers: int):
    """`CompareOptions` from the flags."""
    from kfac_mem.baselines.compare import CompareOptions
    from kfac_mem.baselines.stress import StressOptions

    stress = None
    if not args.no_stress:
        stress = StressOptions(
            shifts=_ints(args.shifts, "--shifts"),
            shift_mode=args.shift_mode,
            relearn_steps=args.relearn_steps,
            relearn_learning_rate=args.relearn_lr,
            relearn_batch_size=args.relearn_batch_size,
            batch_size=args.batch_size,
        )
    projection_sets = tuple(
        parse_layer_selection(None, part, num_layers, ("up", "down"))[1]
        for part in args.bsn_projections.split(";")
    )
    return CompareOptions(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        target_perplexity=args.target_perplexity,
        target_ratio=args.target_ratio,
        tolerance=args.tolerance,
        refine=args.refine,
        candidates=parse_candidates(args.candidates, num_layers),
        rhos=_floats(args.rhos, "--rhos"),
        svd_drops=_floats(args.svd_drops, "--svd-drops"),
        bsn=bsn_config(args, num_layers, prefix="bsn-"),
        bsn_ratios=_floats(args.bsn_ratios, "--bsn-ratios"),
        bsn_loss_weights=_floats(args.bsn_loss_weights, "--bsn-loss-weights"),
        bsn_learning_rates=_floats(args.bsn_lrs, "--bsn-lrs"),
        bsn_projection_sets=projection_sets,
        stress=stress,
        stress_sets=tuple(x.strip() for x in args.stress_sets.split(",") if x.strip()),
        batch_size=args.batch_size,
        ndcg_windows=args.ndcg_windows,
        kfac_precompute_seconds=args.kfac_precompute_seconds,
    )


def run(args: argparse.Namespace) -> int:
    from kfac_mem.baselines.compare import CompareSets, compare
    from kfac_mem.decomposition.store import load_eigen
    from kfac_mem.evaluation.io import read_memorized
    from kfac_mem.evaluation.text import windows_from_sources

    for flag in ("train", "validation", "ood"):
        if getattr(args, flag):
            read_memorized(getattr(args, flag))  # fail on a malformed file before loading
    methods = {m.strip() for m in args.methods.split(",")}
    if "kfac" in methods and not args.eigen:
        raise ValueError("--methods kfac needs --eigen (run `kfac-mem decompose` first).")
    if ("bsn" in methods or (not args.no_stress and args.relearn_steps > 0)) and not args.retain:
        raise ValueError(
            "BSN and the relearning test need clean --retain text (or drop bsn "
            "from --methods and pass --relearn-steps 0)."
        )
    from kfac_mem.rundir import check_output

    check_output(args.out, "comparison", inputs=path_inputs(args))  # before hours of work
    seeds = None
    if args.seeds is not None:
        from kfac_mem.experiments.seeds import parse_seeds

        seeds = parse_seeds(args.seeds)
        for s in seeds if args.eigen and "{seed}" in args.eigen else ():
            if not os.path.isdir(_eigen_path(args.eigen, s)):
                raise FileNotFoundError(
                    f"--eigen {args.eigen}: no eigen run {_eigen_path(args.eigen, s)} for seed {s}."
                )
    elif args.eigen and "{seed}" in args.eigen:
        raise ValueError("--eigen with '{seed}' needs --seeds.")
    per_seed_eigen = seeds is not None and args.eigen and "{seed}" in args.eigen
    eigen = load_eigen(args.eigen) if args.eigen and not per_seed_eigen else None
    init_distributed(args)
    mesh, rules = mesh_from_args(args)
    model = load_model(args, mesh, rules)
    vocab = model.config.vocab_size

    def rows(path):
        return read_memorized(path, vocab_size=vocab) if path else []

    train = rows(args.train)
    text = windows_from_sources(
        args.text,
        model.tokenizer,
        args.window,
        model.config.eos_token_id,
        args.limit_text,
        text_field=args.text_field,
        vocab_size=vocab,
    )
    forget_len = max(len(r["prefix_ids"]) + len(r["suffix_ids"]) for r in train)
    retain = retain_windows(args, model, forget_len) if args.retain else None
    sets = CompareSets(train, rows(args.validation), rows(args.ood), text, retain)
    options = options_from_args(args, model.config.num_layers)
    from kfac_mem.rundir import claim

    out = os.path.abspath(args.out)
    if seeds is not None:
        import sys

        from kfac_mem.baselines.seeds import run_compare_seeds

        with claim(out, "comparison", inputs=path_inputs(args)):
            write_resolved_config(out, "compare", args)
            run_compare_seeds(
                model,
                (lambda s: load_eigen(_eigen_path(args.eigen, s))) if per_seed_eigen else eigen,
                sets,
                options,
                seeds,
                out,
                lambda res, params, d: _write(args, d, model, res, params),
                command="kfac-mem " + " ".join(sys.argv[1:]),
            )
        return 0
    results = compare(model, eigen, sets, options)
    params = results.pop("params")
    with claim(out, "comparison", inputs=path_inputs(args)):
        _write(args, out, model, results, params)
    return 0


def _eigen_path(template: str, seed: int) -> str:
    """--eigen with `{seed}` replaced by the seed."""
    return template.replace("{seed}", str(seed))


def _write(args, out, model, results, params) -> None:
    from kfac_mem.atomic import write_json_atomic
    from kfac_mem.baselines.table import markdown
    from kfac_mem.manifest import run_manifest
    from models import save_model

    if args.save_models:
        for name, p in params.items():
            if name != "baseline":
                setting = results["methods"][name]["setting"]
                save_model(
                    model.with_params(p),
                    os.path.join(out, "models", name),
                    metadata={"compare": {"method": name, "setting": setting}},
                    overwrite=True,
                )
    results["model"] = {"source": model.source, "fingerprint": model.fingerprint()}
    results["files"] = {k: getattr(args, k) for k in ("train", "validation", "ood", "eigen")}
    results["manifest"] = run_manifest({k: v for k, v in vars(args).items() if "seed" in k})
    write_json_atomic(os.path.join(out, "results.json"), results)
    table = markdown(results)
    with open(os.path.join(out, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    write_resolved_config(out, "compare", args)
    print(table)
    print(f"wrote {os.path.join(out, 'results.json')} and comparison.md")
