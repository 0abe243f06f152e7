"""`kfac-mem mine`: find windows a model recites verbatim -> train.jsonl, validation.jsonl."""

from __future__ import annotations

import argparse
import os

from kfac_mem.cli.common import (
    add_mesh_flags,
    add_model_flags,
    init_distributed,
    load_model,
    mesh_from_args,
    path_inputs,
    write_resolved_config,
)


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    from kfac_mem.evaluation.mining import MiningConfig

    d = MiningConfig()  # the library's defaults, not retyped here
    p = subparsers.add_parser(
        name,
        help="mine memorized (prefix, suffix) windows from a corpus",
        description="Cut [prefix | suffix] windows from each document, keep those whose every "
        "suffix token is the model's teacher-forced argmax, drop near-duplicates, "
        "split into train/validation and write DIR/{train,validation}.jsonl.",
    )
    add_model_flags(p)
    p.add_argument(
        "--corpus",
        action="append",
        required=True,
        metavar="FILE",
        help=".txt (one document), .jsonl[.gz] (field --text-field per row), .npy "
        "[N, L] token ids, or a bundled corpus name (lambada); repeatable",
    )
    p.add_argument(
        "--text-field", default="text", help="jsonl field holding the text (default text)"
    )
    p.add_argument(
        "--prefix-len",
        type=_prefix_len,
        default=d.prefix_len,
        metavar="N|rest",
        help=f"prefix tokens per window (default {d.prefix_len}); 'rest': the quotes protocol, one "
        "window per document whose suffix is its last --suffix-len tokens and whose prefix is all "
        "the rest",
    )
    p.add_argument(
        "--suffix-len",
        type=int,
        default=d.suffix_len,
        help=f"suffix tokens (default {d.suffix_len})",
    )
    p.add_argument(
        "--max-prefix-len",
        type=int,
        default=d.max_prefix_len,
        help="with --prefix-len rest: keep at most N prefix tokens (those nearest the suffix)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=d.stride,
        help=f"tokens between window starts (default {d.stride})",
    )
    p.add_argument(
        "--max-jaccard",
        type=float,
        default=d.max_jaccard,
        help="drop a window whose token n-gram Jaccard similarity with a kept one "
        f"exceeds this (default {d.max_jaccard})",
    )
    p.add_argument("--ngram", type=int, default=d.ngram, help="n of the n-grams for deduplication")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help=f"share of windows held out; whole documents go to one side (default {d.val_fraction})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the document-level split")
    p.add_argument(
        "--leak-ngram",
        type=int,
        default=d.leak_ngram,
        help=f"windows sharing a verbatim n-gram this long stay in one split (default {d.leak_ngram})",
    )
    p.add_argument(
        "--max-windows", type=int, default=d.max_windows, help="stop after N candidate windows"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_mesh_flags(p)
    p.set_defaults(run=run)
    return p


def _prefix_len(text: str) -> int | None:
    if text == "rest":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expects a number of tokens or 'rest' (the quotes protocol), got {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    from kfac_mem.atomic import write_json_atomic, write_jsonl_atomic
    from kfac_mem.evaluation.mining import MiningConfig, mine
    from kfac_mem.rundir import check_output, claim

    cfg = MiningConfig(
        args.prefix_len,
        args.suffix_len,
        args.stride,
        args.max_jaccard,
        args.ngram,
        args.val_fraction,
        args.seed,
        args.max_windows,
        args.batch_size,
        args.leak_ngram,
        args.max_prefix_len,
    )
    check_output(args.out, "mined", inputs=path_inputs(args))
    init_distributed(args)
    mesh, rules = mesh_from_args(args)
    model = load_model(args, mesh, rules)
    result = mine(model, args.corpus, cfg, text_field=args.text_field)
    stats = {
        **result["stats"],
        "model": model.source,
        "fingerprint": model.fingerprint(),
        "corpus": args.corpus,
    }
    with claim(args.out, "mined", inputs=path_inputs(args)):
        write_resolved_config(args.out, "mine", args)
        for split in ("train", "validation"):
            write_jsonl_atomic(os.path.join(args.out, f"{split}.jsonl"), result[split])
        write_json_atomic(os.path.join(args.out, "summary.json"), stats)
    print(
        f"{stats['candidates']} candidate windows, {stats['memorized']} memorized, "
        f"{stats['after_dedup']} after near-duplicate removal -> {stats['train']} train / "
        f"{stats['validation']} validation in {args.out}"
    )
    return 0
