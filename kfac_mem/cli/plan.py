"""`kfac-mem plan`: compile a stage ahead of time for a TPU topology and report memory, cost,
collectives, the largest batch that fits and a roofline estimate (nothing allocated, no weights).

Example (the paper's OLMo-2 7B recipe on a v5e-8 slice):
  kfac-mem plan --model olmo2-7b --topology v5e:2x4 --mesh fsdp --stage collect \
      --batch-size 16 --seq-len 512 --layers 23-25 --projections gate,up --out plans/7b-v5e8/

Topologies: v4:2x2x1, v5e:2x2, v5e:2x4, v5p:2x2x1, v5p:2x2x2, v5p:4x4x4, v6e:2x4, ... (compile-only
devices from libtpu: install the `tpu` extra) or cpu:N (this host's CPU devices). Presets are
abstract: no weights are read; a directory is read for its config.json only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kfac_mem.cli import common

STAGE_DEFAULT_PROJECTIONS = {"bsn": ("up", "down")}


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="AOT-compile a stage for a TPU topology: memory, cost, collectives, largest batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="preset name or HF checkpoint directory")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (default bfloat16)")
    p.add_argument("--param-dtype", default="bfloat16", help="storage dtype (default bfloat16)")
    p.add_argument("--topology", required=True, help="v5e:2x4, v5p:2x2x2, v6e:2x4, ... or cpu:8")
    p.add_argument("--num-slices", type=int, default=1, help="TPU slices joined over DCN")
    p.add_argument(
        "--stage", required=True, choices=("collect", "decompose", "edit", "generate", "bsn")
    )
    p.add_argument("--batch-size", type=int, default=8, help="global batch (rows)")
    p.add_argument(
        "--seq-len", type=int, default=512, help="window length (generate: prompt length)"
    )
    p.add_argument("--max-new-tokens", type=int, default=48, help="generate: new tokens")
    p.add_argument("--layers", default=None, help="23,24 or 23-25 or all (default all)")
    p.add_argument("--projections", default=None, help="gate,up,down (default) or q,k,v,o")
    p.add_argument("--mode", choices=("sampled", "empirical"), default="sampled")
    p.add_argument(
        "--reduce",
        choices=("auto", "checkpoint", "step"),
        default="auto",
        help="collect: auto (default: checkpoint if it fits, else step), checkpoint or step",
    )
    p.add_argument(
        "--scheme",
        choices=("auto", "gather", "scatter"),
        default="auto",
        help="collect under reduce=step: per-site accumulation (auto: gather when the step's "
        "activations are smaller than a full factor, else scatter)",
    )
    p.add_argument(
        "--memory-gib",
        type=float,
        default=None,
        help="per-device memory budget in GiB instead of the chip's HBM (headroom; CPU topologies)",
    )
    p.add_argument("--no-search", action="store_true", help="do not search the largest batch")
    p.add_argument(
        "--max-search-compiles", type=int, default=8, help="compiles the batch search may use"
    )
    p.add_argument(
        "--token-budget", type=int, default=20_000_000, help="tokens for the time estimate"
    )
    p.add_argument("--mesh", default="fsdp", help="mesh config: fsdp, data, fsdp_tp or a YAML")
    p.add_argument(
        "--mesh-axis", action="append", default=[], metavar="AXIS=N", help="e.g. tensor=2"
    )
    p.add_argument(
        "--out", default=None, help="directory for plan.json and plan.md (default stdout)"
    )
    p.set_defaults(run=run)


def model_config(name: str, dtype: str, param_dtype: str):
    """A decoder preset's or an HF directory's DecoderConfig (no weights read)."""
    from models.config import DecoderConfig
    from models.hf import config_from_hf, read_hf_config
    from models.presets import PRESETS, preset_config

    if name in PRESETS:
        config = preset_config(name, DecoderConfig)  # plans decoders only
        return config.replace(dtype=dtype, param_dtype=param_dtype)
    if os.path.isdir(name):
        return config_from_hf(
            read_hf_config(name),
            os.path.join(name, "config.json"),
            dtype=dtype,
            param_dtype=param_dtype,
        )
    raise ValueError(
        f"--model {name!r} is neither a decoder preset ({sorted(PRESETS)}) nor a directory with an HF "
        f"config.json."
    )


def run(args: argparse.Namespace) -> int:
    from kfac_mem.aot import compile_only_env

    if not args.topology.startswith("cpu:"):
        compile_only_env()  # before the first JAX backend starts
    from kfac_mem.collection.sites import select_sites
    from kfac_mem.plan import PlanRequest, plan_markdown, run_plan
    from models.sites import decoder_sites

    config = model_config(args.model, args.dtype, args.param_dtype)
    sizes = []
    for item in args.mesh_axis:
        axis, _, n = item.partition("=")
        if not n.lstrip("-").isdigit():
            raise ValueError(f"--mesh-axis expects AXIS=N, got {item!r}.")
        sizes.append((axis, int(n)))
    defaults = STAGE_DEFAULT_PROJECTIONS.get(args.stage, ("gate", "up", "down"))
    layers, projs = common.parse_layer_selection(
        args.layers, args.projections, config.num_layers, defaults
    )
    sites = select_sites(decoder_sites(config), layers=layers, projections=projs)
    request = PlanRequest(
        config=config,
        model_name=args.model,
        topology=args.topology,
        stage=args.stage,
        mesh=args.mesh,
        mesh_sizes=tuple(sizes),
        num_slices=args.num_slices,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        layer_ids=tuple(s.id for s in sites),
        mode=args.mode,
        reduce=args.reduce,
        scheme=args.scheme,
        max_new_tokens=args.max_new_tokens,
        search=not args.no_search,
        max_search_compiles=args.max_search_compiles,
        token_budget=args.token_budget,
        memory_gib=args.memory_gib,
    )
    plan = run_plan(request, sites)
    plan["command"] = "kfac-mem plan " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])
    md = plan_markdown(plan)
    if args.out is None:
        print(md)
        print(json.dumps(plan, indent=1, default=str))
        return 0
    from kfac_mem.atomic import write_atomic

    os.makedirs(args.out, exist_ok=True)
    write_atomic(
        os.path.join(args.out, "plan.json"), lambda f: json.dump(plan, f, indent=1, default=str)
    )
    write_atomic(os.path.join(args.out, "plan.md"), lambda f: f.write(md))
    print(md)
    print(f"plan written to {args.out}/plan.json and plan.md")
    return 0
