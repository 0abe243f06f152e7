"""`kfac-mem export`: write any model this package loads as an HF checkpoint directory.

  kfac-mem export --model smollm2-135m --out runs/smollm2-hf
  kfac-mem export --model runs/edited --out runs/edited-hf --export-dtype bfloat16

--model is a preset, a .gguf file, an Orbax checkpoint of this package (an edited model, a demo
model, a ViT classifier) or an HF directory. --out receives config.json, model.safetensors,
tokenizer.json (when the model has a tokenizer), provenance.json (where the weights came from)
and config.yaml; transformers loads it as-is (docs/design.md §5.5). --out must be new, empty or
an earlier HF export (replaced only with --overwrite).
"""

from __future__ import annotations

import argparse
import os
import textwrap

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
    from models import PRESET_DESCRIPTIONS

    presets = "\n".join(
        textwrap.fill(v, 96, initial_indent=f"  {k:<14}", subsequent_indent=" " * 16)
        for k, v in PRESET_DESCRIPTIONS.items()
    )
    p = subparsers.add_parser(
        name,
        help="write a model (preset, GGUF, Orbax, HF) as an HF checkpoint directory",
        description=__doc__,
        epilog=f"presets (--model NAME):\n{presets}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(p)
    p.add_argument("--out", required=True, metavar="HF_DIR", help="the HF checkpoint directory")
    p.add_argument(
        "--export-dtype",
        default=None,
        help="dtype of the exported tensors, e.g. bfloat16 (default: the parameters' dtype)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier HF export in --out")
    add_mesh_flags(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from kfac_mem.export import export_model
    from kfac_mem.rundir import check_output, claim
    from models.checkpoint import is_model_checkpoint, read_model_info

    inputs = path_inputs(args)
    check_output(
        args.out, "hf-export", inputs=inputs, overwrite=args.overwrite, replace_needs_overwrite=True
    )
    init_distributed(args)
    mesh, rules = mesh_from_args(args)
    model = load_model(args, mesh, rules)
    metadata = (
        read_model_info(args.model).get("metadata", {})
        if os.path.isdir(args.model) and is_model_checkpoint(args.model)
        else {}
    )
    with claim(
        args.out, "hf-export", inputs=inputs, overwrite=args.overwrite, replace_needs_overwrite=True
    ):
        out = export_model(
            model,
            args.out,
            dtype=args.export_dtype,
            metadata=metadata,
            overwrite=args.overwrite,
            inputs=inputs,
        )
        write_resolved_config(out, "export", args)
    tokenizer = "with tokenizer.json" if getattr(model, "tokenizer", None) else "no tokenizer"
    print(f"exported {model.source} -> {out} (config.json, model.safetensors, {tokenizer})")
    return 0
