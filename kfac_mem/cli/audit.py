"""`kfac-mem audit`: extraction attacks and membership inference against an edited model.

    kfac-mem audit --model EDITED --baseline UNEDITED --memorized val=mined/validation.jsonl \
        [--memorized ood=canaries.jsonl] --clean heldout.npy --out audit/

Writes DIR/report.md, DIR/results.json, DIR/examples/<set>.jsonl, DIR/figures/*.png and
DIR/config.yaml into a new or empty DIR (see `kfac_mem.audit`).
"""

from __future__ import annotations

import argparse
import os

from kfac_mem.cli.common import (
    add_mesh_flags,
    add_model_flags,
    init_distributed,
    mesh_from_args,
    parse_named,
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    from kfac_mem.audit.options import ATTACKS, AuditOptions

    d = AuditOptions()
    join = lambda xs: ",".join(map(str, xs))  # noqa: E731
    p = subparsers.add_parser(
        name,
        help="extraction attacks and membership inference against an edited model",
        description="Sampling, beam-search and prefix extraction attacks, membership inference "
        "(loss, zlib, min-k%%, reference model) and relearning against --model, with the unedited "
        "--baseline as reference; every rate with n and a 95%% interval.",
    )
    add_model_flags(p)
    p.add_argument("--baseline", required=True, help="the unedited model (same forms as --model)")
    p.add_argument(
        "--memorized",
        action="append",
        default=[],
        required=True,
        metavar="NAME=FILE.jsonl",
        help="memorized-window set (jsonl rows with prefix_ids, suffix_ids); repeatable",
    )
    p.add_argument(
        "--clean",
        required=True,
        metavar="SET",
        help="held-out clean text of the same source: .npy [N, L] token ids (L >= prefix + "
        "suffix), .txt, .jsonl[.gz] (field --text-field) or a bundled corpus name (lambada)",
    )
    p.add_argument("--text-field", default="text", help="jsonl field holding the clean text")
    p.add_argument("--clean-limit", type=int, default=512, help="at most N clean windows (512)")
    p.add_argument("--limit", type=int, default=None, help="at most N rows per memorized set")
    p.add_argument("--attacks", type=_names, default=d.attacks, help=f"subset of {join(ATTACKS)}")
    p.add_argument("--samples", type=int, default=d.samples, help="samples per prefix k (32)")
    p.add_argument(
        "--sample-curve",
        type=_ints,
        default=d.sample_curve,
        help=f"k' of the curve ({join(d.sample_curve)})",
    )
    p.add_argument(
        "--temperatures", type=_floats, default=d.temperatures, help=f"({join(d.temperatures)})"
    )
    p.add_argument("--top-k", type=int, default=d.top_k, help="top-k sampling filter (0: off)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus filter (1: off)")
    p.add_argument("--beam-width", type=int, default=d.beam_width, help="beams per prefix (8)")
    p.add_argument(
        "--prefix-lengths", type=_ints, default=d.prefix_lengths, help=f"({join(d.prefix_lengths)})"
    )
    p.add_argument("--shifts", type=_ints, default=d.shifts, help=f"({join(d.shifts)})")
    p.add_argument("--shift-modes", type=_names, default=d.shift_modes, help="drop,prepend")
    p.add_argument("--dropout", type=_floats, default=d.dropout, help=f"({join(d.dropout)})")
    p.add_argument("--min-k", type=float, default=d.min_k, help="min-k%% fraction (0.2)")
    p.add_argument(
        "--relearn-steps",
        type=_ints,
        default=d.relearn_steps,
        help=f"checkpoints ({join(d.relearn_steps)})",
    )
    p.add_argument("--relearn-lr", type=float, default=d.relearn_learning_rate)
    p.add_argument("--relearn-batch-size", type=int, default=d.relearn_batch_size)
    p.add_argument("--relearn-fraction", type=float, default=d.relearn_fraction)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="decoder rows per batch")
    p.add_argument("--beam-batch", type=int, default=d.beam_batch, help="prompts per beam batch")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, metavar="DIR", help="new or empty output directory")
    add_mesh_flags(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from kfac_mem.audit import AuditOptions, run_audit
    from kfac_mem.audit.runner import check_output_dir
    from kfac_mem.cli.common import write_resolved_config
    from kfac_mem.evaluation import read_memorized, windows_from_sources
    from models import load_pretrained

    for flag in ("limit", "clean_limit"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {v}.")
    options = AuditOptions(
        attacks=args.attacks,
        samples=args.samples,
        sample_curve=args.sample_curve,
        temperatures=args.temperatures,
        top_k=args.top_k,
        top_p=args.top_p,
        beam_width=args.beam_width,
        prefix_lengths=args.prefix_lengths,
        shifts=args.shifts,
        shift_modes=args.shift_modes,
        dropout=args.dropout,
        min_k=args.min_k,
        relearn_steps=args.relearn_steps,
        relearn_learning_rate=args.relearn_lr,
        relearn_batch_size=args.relearn_batch_size,
        relearn_fraction=args.relearn_fraction,
        batch_size=args.batch_size,
        beam_batch=args.beam_batch,
        seed=args.seed,
        progress=not args.no_progress,
    )
    out = check_output_dir(args.out)
    sets = {
        k: read_memorized(v)[: args.limit]
        for k, v in parse_named(args.memorized, "--memorized").items()
    }
    init_distributed(args)
    mesh, rules = mesh_from_args(args)
    load = lambda path: load_pretrained(  # noqa: E731
        path, mesh=mesh, rules=rules, dtype=args.dtype, param_dtype=args.param_dtype
    )
    model, baseline = load(args.model), load(args.baseline)
    width = max(len(r["prefix_ids"]) + len(r["suffix_ids"]) for rows in sets.values() for r in rows)
    if args.clean.endswith(".npy"):
        import numpy as np

        from kfac_mem.evaluation.text import load_token_array

        clean = load_token_array(args.clean, model.config.vocab_size)[: args.clean_limit]
        if clean.shape[1] < width:
            raise ValueError(
                f"--clean {args.clean}: windows are {clean.shape[1]} tokens wide; the memorized "
                f"windows need >= {width} (prefix + suffix)."
            )
        clean = np.asarray(clean, np.int32)
    else:
        clean = windows_from_sources(
            [args.clean],
            model.tokenizer,
            width,
            model.config.eos_token_id,
            args.clean_limit,
            args.text_field,
            model.config.vocab_size,
        )
    results = run_audit(model, baseline, sets, clean, out, options)
    write_resolved_config(out, "audit", args, extra={"wall_seconds": results["wall_seconds"]})
    for name, res in results["sets"].items():
        aa = res["any_attack"]["exact"]
        print(
            f"{name}: extracted by any attack {100 * aa['rate']:.1f}% "
            f"[{100 * aa['lo']:.1f}, {100 * aa['hi']:.1f}] (n={aa['n']})"
        )
    print(f"wrote {os.path.join(out, 'report.md')} ({results['wall_seconds']:.0f} s)")
    return 0
