"""`kfac-mem baseline bsn`: train a BalancedSubnet mask on a forget set and merge it into the model.

  kfac-mem baseline bsn --model M --forget memorized_train.jsonl --retain clean.jsonl \\
      --out runs/bsn [--export-hf runs/bsn-hf] [--ratio 0.0015 --loss-weight 0.7 --epochs 5]

A binary mask over the chosen MLP matrices (all layers; up,down by default, add gate with
--projections gate,up,down) is learned with straight-through gradients to raise the loss on the
forget windows (memorized, jsonl rows with prefix_ids/suffix_ids) while keeping the loss on the
retain text; the mask is merged (W ← W ⊙ mask). Writes the model (Orbax, like `edit`),
report.json, config.yaml, and optionally an HF checkpoint. The SVD control is
`kfac-mem edit --method svd`.
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
    model_output_dir,
    parse_layer_selection,
    write_model_outputs,
)


def add_retain_flags(p: argparse.ArgumentParser, required: bool) -> None:
    """--retain and its windowing flags (shared with `compare`)."""
    p.add_argument(
        "--retain",
        action="append",
        default=[],
        required=required,
        metavar="SRC",
        help="clean text kept intact: .txt, .jsonl[.gz] (field --text-field), .npy [N, L] token "
        "ids, or a bundled corpus name (lambada); repeatable",
    )
    p.add_argument(
        "--retain-window",
        type=int,
        default=None,
        help="tokens per retain window (default: the forget windows' length)",
    )
    p.add_argument("--limit-retain", type=int, default=None, help="use at most N retain windows")
    p.add_argument("--text-field", default="text", help="jsonl field holding the text")


def add_bsn_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """BSN hyperparameter flags (`compare` prefixes them with `bsn-`)."""
    from kfac_mem.baselines.bsn import BSNConfig

    d = BSNConfig()
    if not prefix:
        p.add_argument(
            "--ratio",
            type=float,
            default=d.ratio,
            help=f"fraction of each masked matrix pruned (default {d.ratio}, the paper's best)",
        )
        p.add_argument(
            "--loss-weight",
            type=float,
            default=d.loss_weight,
            help=f"w in −(1−w)·CE(forget) + w·CE(retain) (default {d.loss_weight})",
        )
        p.add_argument(
            "--lr",
            type=float,
            default=d.learning_rate,
            help=f"SGD learning rate on the scores (default {d.learning_rate})",
        )
        p.add_argument(
            "--projections",
            default=",".join(d.projections),
            help="MLP projections to mask (default up,down; the paper's OLMo-2 port "
            "optionally adds gate)",
        )
    p.add_argument(
        f"--{prefix}epochs",
        type=int,
        default=d.epochs,
        help=f"passes over the forget set (default {d.epochs})",
    )
    p.add_argument(f"--{prefix}momentum", type=float, default=d.momentum)
    p.add_argument(f"--{prefix}weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        f"--{prefix}batch-size",
        type=int,
        default=d.batch_size,
        help="forget windows per step (as many retain windows)",
    )
    p.add_argument(f"--{prefix}layers", default="all", help="layers to mask (default all)")
    p.add_argument(f"--{prefix}seed", type=int, default=d.seed)
    p.add_argument(f"--{prefix}max-steps", type=int, default=None, help="stop after N steps")


def bsn_config(args: argparse.Namespace, num_layers: int, prefix: str = ""):
    """A `BSNConfig` from the flags of `add_bsn_flags`."""
    from kfac_mem.baselines.bsn import BSNConfig

    a = prefix.replace("-", "_")

    def get(name):
        return getattr(args, a + name)

    # `compare` sweeps the masked projections itself (--bsn-projections); up,down is a placeholder.
    projection_flag = args.projections if not prefix else None
    layers, projections = parse_layer_selection(
        get("layers"), projection_flag, num_layers, ("up", "down")
    )
    extra = {}
    if not prefix:
        extra = {"ratio": args.ratio, "loss_weight": args.loss_weight, "learning_rate": args.lr}
    return BSNConfig(
        epochs=get("epochs"),
        momentum=get("momentum"),
        weight_decay=get("weight_decay"),
        batch_size=get("batch_size"),
        layers=None if get("layers") in (None, "", "all") else tuple(layers),
        projections=tuple(projections),
        seed=get("seed"),
        max_steps=get("max_steps"),
        **extra,
    )


def retain_windows(args: argparse.Namespace, model, default_length: int):
    """Clean windows [N, L] from --retain sources."""
    from kfac_mem.evaluation.text import windows_from_sources

    return windows_from_sources(
        args.retain,
        model.tokenizer,
        args.retain_window or default_length,
        model.config.eos_token_id,
        args.limit_retain,
        text_field=args.text_field,
        vocab_size=model.config.vocab_size,
    )


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="baselines the curvature edit is compared with (bsn)")
    sub = p.add_subparsers(dest="baseline", required=True, metavar="BASELINE")
    b = sub.add_parser(
        "bsn",
        help="BalancedSubnet: learn and merge a binary mask over MLP weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(b)
    b.add_argument(
        "--forget",
        required=True,
        help="memorized windows to forget (jsonl rows "
        "with prefix_ids, suffix_ids), e.g. the mined train split",
    )
    add_retain_flags(b, required=True)
    add_bsn_flags(b)
    b.add_argument("--out", required=True, help="directory for the masked model (Orbax) + report")
    b.add_argument("--export-hf", default=None, metavar="DIR", help="also write an HF checkpoint")
    b.add_argument("--export-dtype", default=None, help="dtype of the HF export")
    b.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    add_mesh_flags(b)
    b.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from kfac_mem.baselines.bsn import rows_to_windows, train_bsn
    from kfac_mem.evaluation.io import read_memorized

    out = model_output_dir(args)
    rows = read_memorized(args.forget)  # fail on a malformed file before loading the model
    init_distributed(args)
    mesh, rules = mesh_from_args(args)
    model = load_model(args, mesh, rules)
    rows = read_memorized(args.forget, vocab_size=model.config.vocab_size)
    forget = rows_to_windows(rows)
    retain = retain_windows(args, model, forget.shape[1])
    config = bsn_config(args, model.config.num_layers)
    result = train_bsn(model, forget, retain, config)
    masked = model.with_params(result.params)
    summary = {
        "baseline": "bsn",
        "model": {
            "source": model.source,
            "fingerprint": model.fingerprint(),
            "masked_fingerprint": masked.fingerprint(),
        },
        "forget": {"file": os.path.abspath(args.forget), "windows": int(forget.shape[0])},
        "retain": {"sources": args.retain, "windows": int(retain.shape[0])},
        "config": {**vars(config), "layers": config.layers, "projections": config.projections},
        "steps": result.steps,
        "seconds": result.seconds,
        "history": result.history,
        "matrices": result.report,
    }
    write_model_outputs(
        masked,
        out,
        args,
        {"baseline": {k: summary[k] for k in ("baseline", "config", "forget")}},
        summary,
        "baseline bsn",
    )
    pruned = sum(r["pruned"] for r in result.report)
    total = sum(r["size"] for r in result.report)
    print(
        f"BSN: {result.steps} steps in {result.seconds:.1f}s; pruned {pruned:,} of {total:,} "
        f"weights in {len(result.report)} matrices -> {out}"
        + (f" (HF: {os.path.abspath(args.export_hf)})" if args.export_hf else "")
    )
    return 0
