"""Per-device memory of the collection step on TPU slices, from the TPU compiler (no TPU needed).

Usage (libtpu installed; compile-only devices from `jax.experimental.topologies`):
  python benchmarks/bench_collect_memory.py [--rows NAME,...] [--out benchmarks/results/collect_memory_tpu.md]

For each row (model, sites, topology, batch, sequence 512, sampled labels, bf16 parameters and
activations, `fsdp` mesh) the real `kfac_mem.collection` step is compiled twice:
  before: the scheme of the previous release: reduce="checkpoint" (per-shard full partials, the
          old default) or, where the row says so, reduce="step" with every site "scatter" (full
          local outer product, then reduce-scatter);
  after:  reduce="auto" as `collect` runs it: "checkpoint" if it fits the chip's HBM, else "step"
          with the per-site scheme (row blocks from all-gathered activations where smaller).
Per-device bytes are XLA's memory analysis (arguments + outputs + temps + code − donated); where
the compiler refuses a program for exceeding HBM, its message is recorded instead. HBM per chip:
v5e 16 GiB, v5p 95 GiB, v6e 32 GiB (cloud.google.com/tpu/docs/system-architecture-tpu-vm); the
figure the compiler itself enforces is quoted from its messages where one appears.

Shapes: `DecoderConfig.olmo2_7b` / `olmo2_1b` (the published HF configs: 7B hidden 4096,
intermediate 11008, 32 layers, 32 heads, vocab 100352; OLMo-2-0425-1B hidden 2048, intermediate
8192, 16 layers, 16 heads, vocab 100352), random (abstract) weights: nothing is allocated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import time

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh

from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.reduce import choose_reduce, compile_step
from kfac_mem.collection.sites import select_sites
from kfac_mem.sharding import load_mesh_config, logical_to_sharding
from models import LanguageModel
from models.config import DecoderConfig
from models.language_model import abstract_params
from models.partitioning import tree_shardings

GiB = 2**30
HBM = {"v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
TOPOLOGY = {"v5e-8": "v5e:2x4", "v5p-4": "v5p:2x2x1", "v5p-8": "v5p:2x2x2", "v6e-8": "v6e:2x4"}


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    model: str  # "7b" | "1b"
    sites: str  # "recipe" (layers 23-25 gate/up) | "all_mlp"
    slice: str  # key of TOPOLOGY
    batch: int
    before: str  # "checkpoint" | "step-scatter"


ROWS = (
    Row("7b_allmlp_v5e8", "7b", "all_mlp", "v5e-8", 8, "step-scatter"),
    Row("1b_allmlp_v5e8", "1b", "all_mlp", "v5e-8", 32, "checkpoint"),
    Row("7b_recipe_v5e8", "7b", "recipe", "v5e-8", 16, "checkpoint"),
    Row("7b_recipe_v5p4", "7b", "recipe", "v5p-4", 16, "checkpoint"),
    Row("7b_allmlp_v5p8", "7b", "all_mlp", "v5p-8", 8, "checkpoint"),
    Row("7b_allmlp_v6e8", "7b", "all_mlp", "v6e-8", 8, "checkpoint"),
)


def abstract_model(config, devices) -> LanguageModel:
    cfg = load_mesh_config("fsdp")
    mesh = Mesh(np.asarray(devices).reshape(cfg.resolve_shape(len(devices))), cfg.mesh_axes)
    shapes, logical = abstract_params(config)
    shardings = tree_shardings(logical, shapes, mesh, cfg.rules)
    params = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return LanguageModel(config, params, None, mesh, cfg.rules)


def measure(row: Row, seq: int, phases=("before", "after"), after_reduce: str = "auto") -> dict:
    preset = DecoderConfig.olmo2_7b if row.model == "7b" else DecoderConfig.olmo2_1b
    config = preset().replace(dtype="bfloat16", param_dtype="bfloat16")
    topo = TOPOLOGY[row.slice]
    devices = list(topologies.get_topology_desc(platform="tpu", topology_name=topo).devices)
    hbm = HBM[row.slice.split("-")[0]]
    model = abstract_model(config, devices)
    if row.sites == "recipe":
        sites = select_sites(model.linear_sites(), layers=[23, 24, 25], projections=["gate", "up"])
    else:
        sites = select_sites(model.linear_sites(), projections=["gate", "up", "down"])
    tokens = jax.ShapeDtypeStruct(
        (row.batch, seq),
        jnp.int32,
        sharding=logical_to_sharding(
            ("activation_batch", None), (row.batch, seq), model.mesh, model.rules
        ),
    )
    n_data = len(devices)
    base = CollectConfig(mode="sampled", batch_size=row.batch, vocab_chunk=8192)
    out = {
        "row": row.name,
        "model": f"OLMo-2 {row.model.upper()}",
        "sites": f"{len(sites)} matrices ({row.sites})",
        "slice": f"{row.slice} ({topo}, {devices[0].device_kind})",
        "batch": row.batch,
        "seq": seq,
        "hbm_bytes": hbm,
    }

    def attempt(label, fn):
        t = time.time()
        try:
            res = fn()
        except Exception as e:  # the TPU compiler refuses programs that exceed HBM
            msg = str(e).splitlines()[0][:300]
            m = re.search(r"Used ([\d.]+[GMK]) of ([\d.]+[GMK]) hbm", str(e))
            out[label] = {"error": msg, "oom": m.groups() if m else None}
        else:
            out[label] = res
        out[label]["compile_s"] = round(time.time() - t, 1)
        print(json.dumps({"row": row.name, label: out[label]}), flush=True)

    def before():
        reduce, scheme = (
            ("checkpoint", "auto") if row.before == "checkpoint" else ("step", "scatter")
        )
        cfg = dataclasses.replace(base, reduce=reduce, scheme=scheme)
        _, cost, _ = compile_step(model, sites, cfg, reduce, tokens, n_data)
        return {"mode": row.before, "cost": dataclasses.asdict(cost), "total": cost.total_bytes}

    def after():
        cfg = dataclasses.replace(base, reduce=after_reduce)
        choice = choose_reduce(model, sites, cfg, tokens, n_data, budget_bytes=hbm)
        kinds = sorted(set(choice.schemes.values()))
        return {
            "mode": choice.mode if choice.mode == "checkpoint" else f"step ({'/'.join(kinds)})",
            "reason": choice.reason,
            "cost": dataclasses.asdict(choice.cost),
            "total": choice.cost.total_bytes,
        }

    for label in phases:
        attempt(label, {"before": before, "after": after}[label])
    return out


def cell(r: dict) -> str:
    if "error" in r:
        used = f"{r['oom'][0]} of {r['oom'][1]}" if r.get("oom") else r["error"][:80]
        return f"**does not fit** ({used})"
    c = r["cost"]
    return (
        f"{r['mode']}: {r['total'] / GiB:.2f} GiB "
        f"(args {c['argument_bytes'] / GiB:.2f} + temp {c['temp_bytes'] / GiB:.2f})"
    )


def write_md(rows: list[dict], path: str, argv: list[str]) -> None:
    lines = [
        "# Collection memory per device on TPU slices (TPU compiler, compile-only devices)",
        "",
        f"Command: `python {' '.join(argv)}`  ",
        f"Machine: {platform.machine()} CPU container ({os.cpu_count()} cores), jax {jax.__version__}, "
        f"libtpu compile-only devices; date {time.strftime('%Y-%m-%d', time.gmtime())}.  ",
        "Sequence 512, sampled labels, bf16 weights and activations, float32 sums, `fsdp` mesh. "
        "Shapes from `DecoderConfig.olmo2_7b` / `olmo2_1b` (published HF configs). "
        "Per-device bytes: XLA memory analysis, arguments + outputs + temps + code − donated; "
        "HBM per chip: v5e 16 GiB, v5p 95 GiB, v6e 32 GiB.",
        "",
        "| model, sites | slice | batch | before | after (reduce=auto) | fits after |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        r.setdefault("before", {"error": "not run", "oom": None})
        a = r.get("after", {})
        fits = "error" not in a and a.get("total", 1 << 62) <= r["hbm_bytes"]
        lines.append(
            f"| {r['model']}, {r['sites']} | {r['slice']} | {r['batch']} | "
            f"{cell(r['before'])} | {cell(a) if a else '–'} | {'yes' if fits else 'no'} |"
        )
    lines += ["", "Why each mode was chosen (after):", ""]
    for r in rows:
        if "reason" in r.get("after", {}):
            lines.append(f"- {r['row']}: {r['after']['reason']}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default=",".join(r.name for r in ROWS))
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--out", default="benchmarks/results/collect_memory_tpu.md")
    p.add_argument("--jsonl", default="benchmarks/results/collect_memory_tpu.jsonl")
    p.add_argument("--phases", default="before,after", help="before,after or one of them")
    p.add_argument(
        "--after-reduce",
        default="auto",
        choices=("auto", "step"),
        help="after: reduce=auto as collect runs it, or step directly (skips compiling the "
        "checkpoint program where it is known not to fit)",
    )
    args = p.parse_args()
    wanted = args.rows.split(",")
    done = []
    by_name = {r.name: r for r in ROWS}
    unknown = sorted(set(wanted) - set(by_name))
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; known: {sorted(by_name)}")
    for row in (by_name[w] for w in wanted):
        done.append(measure(row, args.seq_len, tuple(args.phases.split(",")), args.after_reduce))
        with open(args.jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in done)
        write_md(done, args.out, ["benchmarks/bench_collect_memory.py", *sys.argv[1:]])


if __name__ == "__main__":
    main()
