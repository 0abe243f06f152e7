"""`kfac-mem collect`: K-FAC factors A, G for selected linear layers in one pass over a corpus.

Example:
  kfac-mem collect --model DIR --data tokens.npy --mode empirical --layers 0,1 \
      --projections gate,up,down --batch-size 2 --out factors/

Rerunning the same command after an interruption continues from the last checkpoint. Rerunning
it with a larger --max-tokens extends a finished run with the next windows of the same corpus
(the budget is not part of a run's identity; docs/design.md §5.2). --time-budget SECONDS stops at
a step boundary with a checkpoint; rerun the same command to continue. Text documents are joined
with the model's EOS token after each one (docs/design.md §2.10).
"""

from __future__ import annotations

import argparse
import time

from kfac_mem.cli import common

MLP_DEFAULT = ("gate", "up", "down")


def add_parser(sub, name: str) -> None:
    from kfac_mem.collection.config import (
        ACCUMULATE_DTYPES,
        REDUCE_MODES,
        STEP_SCHEMES,
        CollectConfig,
    )
    from kfac_mem.collection.head_loss import MODES

    d = CollectConfig()  # the library's defaults, not retyped here
    p = sub.add_parser(
        name,
        help="collect K-FAC factors (one streaming pass, resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_model_flags(p)
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        help=".npy int array [windows, length] used as is, or text/jsonl files or directories",
    )
    p.add_argument(
        "--text-field", default="text", help="jsonl field holding the text (default text)"
    )
    p.add_argument(
        "--seq-len", type=int, default=512, help="window length for text corpora (default 512)"
    )
    p.add_argument(
        "--layers", default=None, help="layer indices: 23,24 or 0-3 or all (default all)"
    )
    p.add_argument(
        "--projections",
        default=None,
        help="gate,up,down (default) and/or q,k,v,o; 'all' for every linear layer",
    )
    p.add_argument(
        "--layer-ids",
        default=None,
        help="comma-separated HF ids (overrides --layers/--projections)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default=d.mode,
        help=f"labels: sampled from the model (true Fisher) or the gold next tokens (default {d.mode})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the label sampler ({d.seed})")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="use at most this many tokens (windows x length); a larger value on a rerun "
        "extends the run with the next windows of the same corpus",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds of collection (counted once the model and data are "
        "loaded; at a step boundary, with a checkpoint); rerun the same command to continue",
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="windows per step, across all devices"
    )
    p.add_argument(
        "--accumulate",
        choices=ACCUMULATE_DTYPES,
        default=d.accumulate_dtype,
        help="dtype of the running sums (float64 enables 64-bit JAX)",
    )
    p.add_argument(
        "--vocab-chunk", type=int, default=d.vocab_chunk, help="vocabulary chunk of the output loss"
    )
    p.add_argument(
        "--save-every", type=int, default=d.save_every, help="batches between checkpoints"
    )
    p.add_argument(
        "--reduce",
        choices=REDUCE_MODES,
        default=d.reduce,
        help="when per-device sums are reduced: auto (default: the fastest that fits the device, "
        "from the compiled step's memory), checkpoint (fast; one full factor copy per device) or "
        "step (factor memory / device count)",
    )
    p.add_argument(
        "--step-scheme",
        choices=STEP_SCHEMES,
        default=d.scheme,
        help="under --reduce step: all-gather activations and form each device's own rows "
        "(gather), reduce-scatter full local outer products (scatter), or per layer by size (auto)",
    )
    p.add_argument("--engine", choices=("native", "kfac-jax"), default="native")
    p.add_argument(
        "--out", required=True, help="factor run directory (created; resumed if it exists)"
    )
    p.add_argument("--no-progress", action="store_true")
    common.add_mesh_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    common.init_distributed(args)
    import jax

    if args.accumulate == "float64":
        jax.config.update("jax_enable_x64", True)
    from kfac_mem.collection.config import CollectConfig
    from kfac_mem.collection.run import collect
    from kfac_mem.collection.sites import select_sites
    from kfac_mem.data import load_windows
    from kfac_mem.rundir import check_output

    check_output(args.out, "factors", inputs=common.path_inputs(model=args.model, data=args.data))
    mesh, rules = common.mesh_from_args(args)
    model = common.load_model(args, mesh, rules)
    all_sites = model.linear_sites()
    if args.layer_ids:
        sites = select_sites(
            all_sites, ids=[s.strip() for s in args.layer_ids.split(",") if s.strip()]
        )
    else:
        projections = args.projections
        if projections == "all":
            projections = ",".join(dict.fromkeys(s.projection for s in all_sites))
        num_layers = 1 + max(s.layer for s in all_sites)
        layers, projs = common.parse_layer_selection(
            args.layers, projections, num_layers, MLP_DEFAULT
        )
        sites = select_sites(all_sites, layers=layers, projections=projs)
    windows = load_windows(
        args.data,
        args.seq_len,
        model.tokenizer,
        args.max_tokens,
        args.text_field,
        vocab_size=model.config.vocab_size,
        max_positions=model.config.max_position_embeddings,
        eos_id=model.config.eos_token_id,
    )
    config = CollectConfig(
        mode=args.mode,
        seed=args.seed,
        batch_size=args.batch_size,
        accumulate_dtype=args.accumulate,
        vocab_chunk=args.vocab_chunk,
        save_every=args.save_every,
        reduce=args.reduce,
        scheme=args.step_scheme,
    )

    def write_config():  # only once every check of the run has passed
        common.write_resolved_config(
            args.out,
            "collect",
            args,
            {"sites": [s.id for s in sites], "corpus": windows.describe()},
        )

    before = _positions_done(args.out)
    t0 = time.time()
    run_ = collect(
        model,
        windows,
        sites,
        args.out,
        config,
        engine=args.engine,
        progress=not args.no_progress,
        time_budget_s=args.time_budget,
        before_write=write_config,
    )
    if jax.process_index() == 0:
        elapsed = time.time() - t0
        done = run_.info["windows_done"]
        now = run_.n_tokens - before
        print(
            f"collected {now:,} positions in {elapsed:.1f} s ({now / max(elapsed, 1e-9):,.0f} "
            f"positions/s, compilation included); the run holds {run_.n_tokens:,} positions "
            f"({done:,} windows of {windows.seq_len}) for {len(sites)} layers, mode={args.mode}, "
            f"on {jax.device_count()} devices"
        )
        if not run_.complete:
            print(
                f"stopped by the time budget after {done:,} of {len(windows):,} windows "
                f"({100 * done / len(windows):.1f}%); rerun the same command to continue"
            )
        used = run_.metadata.get("reduce")
        if used:
            print(f"reduce={used['mode']}: {used['reason']}")
        print(f"factors written to {run_.directory}")
    return 0


def _positions_done(out: str) -> int:
    """Positions a factor run at `out` already holds (0 for a new directory)."""
    import json
    import os

    try:
        with open(os.path.join(out, "metadata.json"), encoding="utf-8") as f:
            return int((json.load(f).get("progress") or {}).get("n_tokens") or 0)
    except (OSError, ValueError, AttributeError, TypeError):
        return 0
