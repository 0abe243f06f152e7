"""Flags and helpers shared by subcommands: mesh, multi-host, model loading, resolved configs."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import Any

import yaml

from kfac_mem.errors import CorruptArtifactError, InputError, UserError

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
        "--coordinator-timeout",
        type=int,
        default=300,
        metavar="SECONDS",
        help="multi-host: how long to wait for every process to join (default 300)",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)",
    )


def add_model_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="HF checkpoint dir, .gguf file, Orbax model checkpoint dir, or preset name "
        "(listed in `kfac-mem export --help`; smollm2-135m is SmolLM2-135M-Instruct from its "
        "Q4_1-quantized GGUF, dequantized)",
    )
    p.add_argument(
        "--dtype", default=None, help="compute dtype (default float32; bfloat16 on accelerators)"
    )
    p.add_argument("--param-dtype", default=None, help="parameter storage dtype (default float32)")


def init_distributed(args: argparse.Namespace) -> None:
    """Initialize jax.distributed if asked (must run before any other JAX call); in a
    multi-process run only process 0 then prints to stdout."""
    import jax

    if args.coordinator or args.num_processes:
        if not (args.coordinator and args.num_processes and args.process_id is not None):
            raise ValueError(
                "Multi-host needs all of --coordinator, --num-processes and --process-id "
                "(or --distributed for auto-detection)."
            )
        # Only the CPU backend reads this (cross-process CPU collectives, e.g. tests on localhost).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        timeout = int(getattr(args, "coordinator_timeout", 300))
        print(
            f"kfac-mem: process {args.process_id} of {args.num_processes}: waiting up to "
            f"{timeout} s for all {args.num_processes} processes to join the coordinator at "
            f"{args.coordinator} (--coordinator-timeout)",
            file=sys.stderr,
            flush=True,
        )
        try:
            jax.distributed.initialize(
                args.coordinator,
                args.num_processes,
                args.process_id,
                initialization_timeout=timeout,
            )
        except Exception as e:  # the coordination service reports a deadline as a RuntimeError
            if isinstance(e, (KeyboardInterrupt, UserError)):
                raise
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise TimeoutError(
                f"--coordinator {args.coordinator}: not all {args.num_processes} processes joined "
                f"within {timeout} s ({type(e).__name__}: {first}). Start every process with the "
                f"same --coordinator and --num-processes and its own --process-id, or raise "
                f"--coordinator-timeout."
            ) from e
    elif args.distributed:
        jax.distributed.initialize()
    if jax.process_count() > 1 and jax.process_index() != 0:
        # One report per run: process 0 prints results; the others keep only stderr (errors).
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)


def mesh_from_args(args: argparse.Namespace):
    from kfac_mem.sharding import make_mesh

    sizes = {}
    for item in args.mesh_axis:
        axis, _, n = item.partition("=")
        if not n.lstrip("-").isdigit():
            raise ValueError(f"--mesh-axis expects AXIS=N, got {item!r}.")
        sizes[axis] = int(n)
    return make_mesh(args.mesh, **sizes)


def load_model(args: argparse.Namespace, mesh=None, rules=None, path: str | None = None):
    """The model named by --model (or `path`), placed on the mesh (`models.load_pretrained` or a
    ViT). A file that cannot be read is an error naming it; non-finite weights are refused."""
    from models import load_pretrained

    source = args.model if path is None else path
    try:
        model = load_pretrained(
            source, mesh=mesh, rules=rules, dtype=args.dtype, param_dtype=args.param_dtype
        )
    except (UserError, FileNotFoundError, FileExistsError):
        raise
    except Exception as e:  # truncated safetensors / Orbax files, malformed configs
        first = str(e).strip().splitlines()[0][:240] if str(e).strip() else ""
        if isinstance(e, (ValueError, KeyError)) and os.path.basename(str(source)) in first:
            raise  # the loader's own message already names the file
        bad = _unreadable_json(source)
        raise CorruptArtifactError(
            f"{bad or source}: the model cannot be loaded ({type(e).__name__}: {first}); "
            f"{'the file' if bad else 'a file of it'} is truncated or malformed (run with --debug "
            f"for the traceback)."
        ) from e
    check_finite_params(model.params, f"the model {source}")
    return model


def _unreadable_json(directory: str) -> str | None:
    """The first *.json file directly in `directory` that does not parse (None if all do)."""
    import json

    if not os.path.isdir(directory):
        return None
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    json.load(f)
            except (OSError, ValueError):
                return path
    return None


def check_finite_params(params, artifact: str) -> None:
    """`kfac_mem.validation.check_finite_tree` (NonFiniteError naming each non-finite parameter)."""
    from kfac_mem.validation import check_finite_tree

    check_finite_tree(params, artifact)


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
        try:
            for part in layers.split(","):
                part = part.strip()
                if "-" in part:
                    lo, hi = part.split("-")
                    idx.extend(range(int(lo), int(hi) + 1))
                elif part:
                    idx.append(int(part))
        except ValueError:
            raise InputError(
                f"--layers expects layer indices such as 23,24 or 0-3 or all, got {layers!r}."
            ) from None
    bad = [i for i in idx if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"--layers {bad} out of range: the model has layers 0..{num_layers - 1}.")
    projs = tuple(p.strip() for p in projections.split(",")) if projections else default_projections
    return sorted(set(idx)), projs


OUTPUT_FLAGS = ("out", "export_hf", "cache_dir", "write_edit")


def path_inputs(args: argparse.Namespace | None = None, **named: Any) -> dict[str, str]:
    """Every flag value naming an existing file or directory (the command's inputs), by flag;
    outputs (`--out`, `--export-hf`, `--cache-dir`, `--write-edit`) excluded. For
    `rundir.check_output`."""
    values = dict(vars(args)) if args is not None else {}
    values.update(named)
    out: dict[str, str] = {}
    for key, value in values.items():
        if key in OUTPUT_FLAGS or key in ("run", "command"):
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            if isinstance(item, str) and "=" in item and not os.path.exists(item):
                item = item.split("=", 1)[1]  # NAME=PATH flags (--memorized, --set)
            if isinstance(item, str) and item and os.path.exists(item):
                out[key if len(items) == 1 else f"{key}[{i}]"] = item
    return out


def model_output_dir(args: argparse.Namespace) -> str | None:
    """`--out` (and `--export-hf`) checked before any work: each must be new, empty or this tool's
    output of its kind (replaced only with --overwrite), and neither may be an input. `--out` may
    be left out when `--export-hf` is given (then no Orbax copy is written); returns its real path
    or None."""
    from kfac_mem.rundir import check_output

    if not args.out and not getattr(args, "export_hf", None):
        raise ValueError(
            f"`kfac-mem {args.command}` writes the model to --out DIR (Orbax, with report.json) "
            f"and/or --export-hf DIR (an HF checkpoint); give at least one."
        )
    inputs = path_inputs(args)
    out = None
    if args.out:
        out = check_output(
            args.out, "model", inputs=inputs, overwrite=args.overwrite, replace_needs_overwrite=True
        )
    if getattr(args, "export_hf", None):
        check_output(
            args.export_hf,
            "hf-export",
            inputs={**inputs, "out_dir": out},
            overwrite=args.overwrite,
            replace_needs_overwrite=True,
            arg="hf_dir",
        )
    return out


def write_model_outputs(
    model,
    out: str | None,
    args: argparse.Namespace,
    metadata: dict[str, Any],
    report: dict[str, Any],
    command: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """What `edit` and `baseline` write: the model (Orbax) with report.json and config.yaml in
    `out`, and its HF export with --export-hf (`kfac_mem.export.export_model`). Without `out`
    the HF export is the only copy and receives report.json and config.yaml itself. The weights
    are checked finite first; both directories are claimed (ownership re-checked, locked,
    marked) before anything is written."""
    import contextlib

    from kfac_mem.atomic import write_json_atomic
    from kfac_mem.export import export_model
    from kfac_mem.rundir import claim
    from models import save_model

    where = out or args.export_hf
    check_finite_params(model.params, f"the weights `kfac-mem {command}` produced for {where}")
    inputs = path_inputs(args)
    with contextlib.ExitStack() as stack:
        if out:
            stack.enter_context(
                claim(
                    out,
                    "model",
                    inputs=inputs,
                    overwrite=args.overwrite,
                    replace_needs_overwrite=True,
                )
            )
        if args.export_hf:
            stack.enter_context(
                claim(
                    args.export_hf,
                    "hf-export",
                    inputs={**inputs, "out_dir": out},
                    overwrite=args.overwrite,
                    replace_needs_overwrite=True,
                    arg="hf_dir",
                )
            )
        if out:
            save_model(model, out, metadata=metadata, overwrite=True)
        if args.export_hf:
            export_model(
                model,
                args.export_hf,
                dtype=args.export_dtype,
                metadata=metadata,
                overwrite=True,
                inputs={**inputs, "out_dir": out},
            )
        write_json_atomic(os.path.join(where, "report.json"), report)
        write_resolved_config(where, command, args, extra=extra)


def parse_named(items: list[str], flag: str) -> dict[str, str]:
    """`NAME=FILE` (or a bare FILE, named by its stem) -> {name: path}."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            path, name = item, os.path.basename(item).split(".")[0]
        if not name or not path:
            raise InputError(f"{flag} expects NAME=FILE.jsonl, got {item!r}.")
        if name in out:
            raise InputError(f"{flag}: the name {name!r} is used twice; give NAME=FILE.")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} {item}: {path} does not exist.")
        out[name] = path
    return out
