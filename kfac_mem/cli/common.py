"""Flags and helpers shared by subcommands: mesh, multi-host, model loading, resolved configs."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import Any

import yaml

DEBUG_ENV = "KFAC_MEM_DEBUG"


def is_debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def add_mesh_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("placement (mesh and multi-host)")
    g.add_argument(
        "--mesh",
        default="fsdp",
        help="mesh config: a bundled name (fsdp, data, fsdp_tp) or a YAML path (default fsdp)",
    )
    g.add_argument(
        "--mesh-axis",
        action="append",
        default=[],
        metavar="AXIS=N",
        help="override one mesh axis size, e.g. --mesh-axis tensor=8 (repeatable)",
    )
    g.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="multi-host: jax.distributed coordinator address (with --num-processes, --process-id)",
    )
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    g.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)",
    )


def add_model_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="HF checkpoint dir, .gguf file, Orbax model checkpoint dir, or preset name",
    )
    p.add_argument(
        "--dtype", default=None, help="compute dtype (default float32; bfloat16 on accelerators)"
    )
    p.add_argument("--param-dtype", default=None, help="parameter storage dtype (default float32)")


def init_distributed(args: argparse.Namespace) -> None:
    """Initialize jax.distributed if asked (must run before any other JAX call)."""
    import jax

    if args.coordinator or args.num_processes:
        if not (args.coordinator and args.num_processes and args.process_id is not None):
            raise ValueError(
                "Multi-host needs all of --coordinator, --num-processes and --process-id "
                "(or --distributed for auto-detection)."
            )
        # Only the CPU backend reads this (cross-process CPU collectives, e.g. tests on localhost).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def mesh_from_args(args: argparse.Namespace):
    from kfac_mem.sharding import make_mesh

    sizes = {}
    for item in args.mesh_axis:
        axis, _, n = item.partition("=")
        if not n.lstrip("-").isdigit():
            raise ValueError(f"--mesh-axis expects AXIS=N, got {item!r}.")
        sizes[axis] = int(n)
    return make_mesh(args.mesh, **sizes)


def load_model(args: argparse.Namespace, mesh=None, rules=None):
    """The model named by --model, placed on the mesh (`models.load_pretrained` or a ViT)."""
    from models import load_pretrained

    return load_pretrained(
        args.model, mesh=mesh, rules=rules, dtype=args.dtype, param_dtype=args.param_dtype
    )


def write_resolved_config(
    out_dir: str, command: str, args: argparse.Namespace, extra: dict[str, Any] | None = None
) -> str:
    """Write `<out_dir>/config.yaml`: every flag as resolved, the command line, devices, versions
    and the run manifest (`kfac_mem.manifest.run_manifest`, seeds = every `*seed*` flag)."""
    import jax

    from kfac_mem.manifest import run_manifest

    os.makedirs(out_dir, exist_ok=True)
    flags = {k: v for k, v in vars(args).items() if k not in ("run", "command") and not callable(v)}
    seeds = {k: v for k, v in flags.items() if "seed" in k}
    doc = {
        "command": command,
        "argv": sys.argv,
        "flags": flags,
        "devices": {
            "count": jax.device_count(),
            "platform": jax.devices()[0].platform,
            "processes": jax.process_count(),
        },
        "versions": {"jax": jax.__version__},
        "manifest": run_manifest(seeds),
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if extra:
        doc.update(extra)
    from kfac_mem.atomic import write_atomic

    return write_atomic(
        os.path.join(out_dir, "config.yaml"), lambda f: yaml.safe_dump(doc, f, sort_keys=False)
    )


def parse_layer_selection(
    layers: str | None,
    projections: str | None,
    num_layers: int,
    default_projections: tuple[str, ...],
) -> tuple[list[int], tuple[str, ...]]:
    """`--layers 23,24` / `--layers 0-3` / `all` and `--projections gate,up` -> (layers, projections)."""
    if layers in (None, "", "all"):
        idx = list(range(num_layers))
    else:
        idx = []
        for part in layers.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-")
                idx.extend(range(int(lo), int(hi) + 1))
            elif part:
                idx.append(int(part))
    bad = [i for i in idx if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"--layers {bad} out of range: the model has layers 0..{num_layers - 1}.")
    projs = tuple(p.strip() for p in projections.split(",")) if projections else default_projections
    return sorted(set(idx)), projs


def model_output_dir(args: argparse.Namespace) -> str:
    """`--out` as an absolute path, refused early if it already holds a model and no --overwrite."""
    from models.checkpoint import is_model_checkpoint

    out = os.path.abspath(args.out)
    if is_model_checkpoint(out) and not args.overwrite:
        raise FileExistsError(
            f"{out} already holds a model checkpoint; pass --overwrite or choose another --out."
        )
    return out


def write_model_outputs(
    model,
    out: str,
    args: argparse.Namespace,
    metadata: dict[str, Any],
    report: dict[str, Any],
    command: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """What `edit` and `baseline` write: the model (Orbax), its HF export with --export-hf,
    report.json and config.yaml."""
    from kfac_mem.atomic import write_json_atomic
    from models import export_hf, save_model

    save_model(model, out, metadata=metadata, overwrite=args.overwrite)
    if args.export_hf:
        export_hf(
            model.config,
            model.params,
            args.export_hf,
            tokenizer=model.tokenizer,
            dtype=args.export_dtype,
        )
    write_json_atomic(os.path.join(out, "report.json"), report)
    write_resolved_config(out, command, args, extra=extra)
