"""`kfac-mem demo`: the whole pipeline on an embedded default (see kfac_mem/demo/).

kfac-mem demo                      committed small OLMo-2 -> mine, collect, decompose, analyze,
                                   edit sweep, evaluate, report (runs/demo/report.md)
kfac-mem demo --retrain            train that model from scratch first (cached in OUT/model)
kfac-mem demo --preset tiny        every stage at toy size (CI)
kfac-mem demo --preset smollm2     SmolLM2-135M-Instruct (its Q4_1 GGUF, dequantized), fine-tuned
                                   to memorize
kfac-mem demo --preset vit-digits  the vision experiment (label-noise memorization)
kfac-mem demo --seeds 0-4          the LM demo over 5 seeds (sampled labels of the factors, the
                                   random-basis control, the analyzer; the model too with --retrain
                                   or --preset tiny): mean, sd and 95% interval across seeds
kfac-mem demo --preset vit-digits --seeds 0-4
                                   the same for the vision experiment (label noise, ViT training)

The presets (`kfac_mem.demo.presets.DEMO_PRESETS`) are listed below.
"""

from __future__ import annotations

import argparse
import os
import sys

from kfac_mem.cli import common


def add_parser(sub, name: str) -> None:
    from kfac_mem.demo.presets import DEMO_PRESETS, describe_presets

    p = sub.add_parser(
        name,
        help="run the end-to-end demo on an embedded default",
        description=__doc__,
        epilog="presets:\n" + describe_presets(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset",
        default="default",
        choices=list(DEMO_PRESETS),
        metavar="NAME",
        help="which demo (listed below; default: default)",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/demo-<preset>)")
    p.add_argument("--retrain", action="store_true", help="train the model instead of loading it")
    p.add_argument(
        "--export-asset",
        default=None,
        metavar="DIR",
        help="after training, write the model as a committed asset (bf16 HF dir)",
    )
    p.add_argument(
        "--seeds",
        default=None,
        metavar="LIST",
        help="repeat every seed-dependent stage per seed (e.g. 0-4 or 0,3,7) into OUT/seed-<s>/ "
        "and report mean, sd and a 95%% interval across seeds (OUT/seeds.md); not for smollm2",
    )
    common.add_mesh_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kfac_mem.demo.presets import demo_preset

    if args.seeds is not None and not demo_preset(args.preset).multi_seed:
        print(
            "kfac-mem demo: --seeds is not supported for --preset smollm2 (35 minutes of CPU "
            "per run); use default, tiny or a vit-* preset.",
            file=sys.stderr,
        )
        return 2
    if args.seeds is not None and args.export_asset:
        print("kfac-mem demo: --export-asset takes one run, not --seeds.", file=sys.stderr)
        return 2
    if args.seeds is not None:
        from kfac_mem.experiments.seeds import parse_seeds

        parse_seeds(args.seeds)  # a malformed list fails before the run directory is claimed
    common.init_distributed(args)
    out = args.out or os.path.join("runs", f"demo-{args.preset}")
    from kfac_mem.rundir import claim

    inputs = common.path_inputs(args)
    mesh, rules = common.mesh_from_args(args)
    with claim(out, "demo", inputs=inputs):  # a demo run directory resumes its cached stages
        common.write_resolved_config(out, "demo", args)
        return _run(args, out, mesh, rules)


def _run(args: argparse.Namespace, out: str, mesh, rules) -> int:
    from kfac_mem.demo.presets import demo_preset

    preset = demo_preset(args.preset)
    if preset.experiment == "language" and args.seeds is not None:
        from kfac_mem.demo.seeds import run_demo_seeds
        from kfac_mem.experiments.seeds import parse_seeds

        run_demo_seeds(
            preset.config(),
            parse_seeds(args.seeds),
            out,
            mesh,
            rules,
            retrain=args.retrain,
            log=lambda m: print(m, flush=True),
            command="kfac-mem " + " ".join(sys.argv[1:]),
        )
        return 0
    if preset.experiment == "language":
        from kfac_mem.demo.pipeline import run_demo

        summary = run_demo(
            preset.config(),
            out,
            mesh,
            rules,
            retrain=args.retrain,
            log=lambda m: print(m, flush=True),
        )
        if args.export_asset:
            from kfac_mem.demo.model import export_asset
            from models import load_pretrained

            model = load_pretrained(os.path.join(out, "model"), mesh=mesh, rules=rules)
            export_asset(model, summary["provenance"], args.export_asset)
            print(f"asset written to {args.export_asset}")
        met = summary["all_targets_met"]
        print(
            f"strict recitation (held-out memorized) {summary['recitation_strict_before']:.1%} -> "
            f"{summary['recitation_strict_after']:.1%}; perplexity {summary['perplexity_before']:.2f} "
            f"-> {summary['perplexity_after']:.2f}; targets {'met' if met else 'NOT all met (see report)'}"
        )
        return 0
    if preset.experiment == "smollm2":
        from kfac_mem.demo.smollm2 import run_smollm2_demo

        run_smollm2_demo(out, mesh, rules, preset.config(), log=lambda m: print(m, flush=True))
        return 0
    if preset.experiment == "vision" and args.seeds is not None:
        from kfac_mem.experiments.seeds import parse_seeds
        from kfac_mem.vision.seeds import run_vision_seeds

        run_vision_seeds(
            preset.config(),
            parse_seeds(args.seeds),
            out,
            mesh,
            rules,
            retrain=args.retrain,
            log=lambda m: print(m, flush=True),
            command="kfac-mem " + " ".join(sys.argv[1:]),
        )
        return 0
    from kfac_mem.vision.demo import run_vision_demo

    run_vision_demo(
        preset.config(), out, mesh, rules, retrain=args.retrain, log=lambda m: print(m, flush=True)
    )
    return 0
