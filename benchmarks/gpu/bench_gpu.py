"""OLMo-2 1B shape on one accelerator: collect 3 layers' factors, decompose, edit; report tokens/s,
eigh seconds, peak device memory and model FLOP utilization (MFU).

  python benchmarks/gpu/bench_gpu.py                 # GPU: olmo2-1b (random init), bf16 compute
  python benchmarks/gpu/bench_gpu.py --train-step    # also time a plain training step
  python benchmarks/gpu/bench_gpu.py --smoke         # CPU check: tiny-olmo2, a few steps

`models.load_pretrained("olmo2-1b", dtype="bfloat16")` gives the real OLMo-2-0425-1B config with
random weights (float32 storage, bf16 compute); cost does not depend on the values. Windows are
seeded random tokens. Default: layers 11-13 gate/up (a public 1B reproduction's choice),
sampled labels, 1024 windows x 512 tokens, batch 32, ρ = 0.6, float32 eigh.

Timings: `collect` is the library call (`kfac_mem.collection.collect`); JAX trace/compile seconds are
read from jax.monitoring events and reported apart; the final Orbax save and the read-back of the
sums (both inside `collect`) are re-timed afterwards and also taken out of the steady figure:
  steady tokens/s = window tokens / (collect wall − compile − save − read-back).

FLOPs counted per window token (d hidden, f MLP width, H·hd attention width, K·hd kv width,
V vocab, S window length, L blocks, l0 the lowest selected block):
  forward   2·L·(P_attn + P_mlp) + 4·L·S·H·hd + 2·d·V
            P_attn = d·H·hd + 2·d·K·hd + H·hd·d,  P_mlp = 3·d·f  (every matmul, full S×S scores)
  backward  input gradients only (no dW), from the head down to the outputs of the selected
            sites: 2·(L−1−l0)·(P_attn + P_mlp) + 8·(L−1−l0)·S·H·hd + 2·d·f (block l0's down_proj)
            + 2·d·V (head)
  factors   Σ over input groups 2·d_in² + Σ over sites 2·d_out²  (full GEMMs)
MFU = counted FLOPs/token x steady tokens/s / peak (bf16 dense peak by device kind: H100/H200
989 TFLOP/s, H100 PCIe 756, A100 312; or --peak-tflops). With --dtype float32 the MFU is still
against the bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from kfac_mem.collection import store as fstore
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import input_groups, select_sites
from kfac_mem.data import Windows, array_fingerprint
from kfac_mem.decomposition.eigh import stacked_eigh
from kfac_mem.decomposition.store import decompose_run
from kfac_mem.editing.apply import EditOptions, apply_plan
from kfac_mem.editing.plan import plan_from_flags
from kfac_mem.sharding import make_mesh
from models import load_pretrained

# Dense bf16 peak TFLOP/s by device-kind substring, most specific first.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_intervals: list[tuple[float, float]] = []


def _listen(event: str, duration: float, **_: object) -> None:
    if event in COMPILE_EVENTS:
        end = time.perf_counter()
        _intervals.append((end - duration, end))


def compile_seconds() -> float:
    """Trace + lowering + compile seconds so far: the union of the event intervals (nested jit
    traces emit nested events)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(_intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def flops_per_token(config, sites, seq_len: int) -> dict[str, float]:
    """Counted FLOPs per window token (formula in the module docstring)."""
    d, f, v, n = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_layers
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    p_attn, p_mlp = d * q + 2 * d * kv + q * d, 3 * d * f
    l0 = min(s.layer for s in sites)
    above = n - 1 - l0
    fwd = 2 * n * (p_attn + p_mlp) + 4 * n * seq_len * q + 2 * d * v
    bwd = 2 * above * (p_attn + p_mlp) + 8 * above * seq_len * q + 2 * d * f + 2 * d * v
    fac = sum(2 * s.d_in**2 for s in input_groups(sites).values())
    fac += sum(2 * s.d_out**2 for s in sites)
    return {"forward": fwd, "backward": bwd, "factors": fac, "total": fwd + bwd + fac}


def peak_tflops(requested: float | None) -> float | None:
    if requested:
        return requested
    kind = jax.devices()[0].device_kind
    return next((p for k, p in PEAK_TFLOPS.items() if k in kind), None)


def device_memory() -> dict:
    stats = jax.devices()[0].memory_stats() or {}
    out = {k: stats[k] / 2**30 for k in ("peak_bytes_in_use", "bytes_limit") if k in stats}
    out["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def train_step_seconds(model, tokens: np.ndarray, repeats: int = 3) -> float:
    """Median seconds of one jitted value_and_grad step (summed CE, every parameter)."""

    def loss(params, batch):
        inputs, labels, weights = model.loss_targets(batch)
        logits = model.apply(params, inputs)[0].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        return -jnp.sum(jnp.take_along_axis(logp, labels[..., None], -1)[..., 0] * weights)

    step = jax.jit(jax.value_and_grad(loss))
    batch = jnp.asarray(tokens, jnp.int32)
    jax.block_until_ready(step(model.params, batch))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(model.params, batch))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="olmo2-1b")
    ap.add_argument("--layers", default="11-13")
    ap.add_argument("--projections", default="gate,up")
    ap.add_argument("--windows", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--mode", default="sampled", choices=("sampled", "empirical"))
    ap.add_argument("--vocab-chunk", type=int, default=16384)
    ap.add_argument("--reduce", default="checkpoint", choices=("checkpoint", "step"))
    ap.add_argument("--rho", type=float, default=0.6)
    ap.add_argument("--precision", default="float32", choices=("float32", "float64"))
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--train-step", action="store_true", help="also time a plain training step")
    ap.add_argument("--out", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of the whole script")
    args = ap.parse_args()
    if args.smoke:
        args.preset, args.layers, args.dtype = "tiny-olmo2", "0-1", "float32"
        args.windows, args.seq_len, args.batch_size = 16, 64, 4
    jax.monitoring.register_event_duration_secs_listener(_listen)
    out = args.out or tempfile.mkdtemp(prefix="kfac-gpu-bench-")
    report: dict = {
        "args": vars(args),
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "jax": jax.__version__,
    }

    mesh, rules = make_mesh("fsdp")
    t0 = time.perf_counter()
    model = load_pretrained(args.preset, mesh=mesh, rules=rules, dtype=args.dtype)
    report["load_s"] = time.perf_counter() - t0
    lo, _, hi = args.layers.partition("-")
    layers = list(range(int(lo), int(hi or lo) + 1))
    projections = tuple(args.projections.split(","))
    sites = select_sites(model.linear_sites(), layers=layers, projections=projections)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.config.vocab_size, (args.windows, args.seq_len), np.int32)
    windows = Windows(tokens, ("random-tokens-seed0",), array_fingerprint(tokens))

    config = CollectConfig(
        mode=args.mode,
        batch_size=args.batch_size,
        save_every=1 << 30,
        vocab_chunk=args.vocab_chunk,
        reduce=args.reduce,
    )
    c0, t0 = compile_seconds(), time.perf_counter()
    run = collect(model, windows, sites, os.path.join(out, "factors"), config, progress=False)
    wall, compile_s = time.perf_counter() - t0, compile_seconds() - c0
    report["memory_after_collect"] = device_memory()
    t1 = time.perf_counter()
    fstore.FactorRun(os.path.join(out, "factors"))
    read_s = time.perf_counter() - t1
    with fstore.checkpoint_manager(os.path.join(out, "resave")) as manager:
        t1 = time.perf_counter()
        fstore.save_state(manager, 0, run.sums, dict(run.info))
        save_s = time.perf_counter() - t1
    n_tok = (len(windows) // args.batch_size) * args.batch_size * args.seq_len
    steady = wall - compile_s - save_s - read_s
    flops = flops_per_token(model.config, sites, args.seq_len)
    peak = peak_tflops(args.peak_tflops)
    tps = n_tok / steady
    report["collect"] = {
        "wall_s": wall,
        "compile_s": compile_s,
        "save_s": save_s,
        "read_back_s": read_s,
        "steady_s": steady,
        "tokens": n_tok,
        "tokens_per_s": tps,
        "tokens_per_s_incl_compile": n_tok / wall,
        "flops_per_token": flops,
        "achieved_tflops": flops["total"] * tps / 1e12,
        "mfu": flops["total"] * tps / (peak * 1e12) if peak else None,
        "peak_tflops": peak,
    }
    if args.train_step:
        t = train_step_seconds(model, tokens[: args.batch_size])
        report["train_step"] = {
            "seconds": t,
            "tokens_per_s": args.batch_size * args.seq_len / t,
            "collect_time_over_train_time": (args.batch_size * args.seq_len / t) / tps,
        }

    c0, t0 = compile_seconds(), time.perf_counter()
    eigen = decompose_run(run, os.path.join(out, "eigen"), mesh, rules, precision=args.precision)
    report["decompose"] = {"wall_s": time.perf_counter() - t0, "compile_s": compile_seconds() - c0}
    eigh = {}
    for site in (sites[0],):  # compiled above: time the bare stacked eigh per factor size
        for name, m in (("A", run[site.id].A), ("G", run[site.id].G)):
            stack = np.asarray(m, np.float32)[None]
            jax.block_until_ready(stacked_eigh(stack, mesh, rules))
            t1 = time.perf_counter()
            jax.block_until_ready(stacked_eigh(stack, mesh, rules))
            eigh[f"{name} {m.shape[0]}x{m.shape[0]}"] = time.perf_counter() - t1
    report["eigh_s_per_matrix"] = eigh

    plan = plan_from_flags(
        layers, [p for p in projections if p != "down"], args.rho, model.linear_sites()
    )
    c0, t0 = compile_seconds(), time.perf_counter()
    _, rows = apply_plan(
        model.params,
        model.linear_sites(),
        plan,
        eigen,
        EditOptions(precision=args.precision, compute_rank=False),
    )
    report["edit"] = {
        "wall_s": time.perf_counter() - t0,
        "compile_s": compile_seconds() - c0,
        "matrices": len(rows),
        "kept_mass": [round(r["kept_mass"], 4) for r in rows],
    }
    report["memory_end"] = device_memory()
    print(json.dumps(report, default=float), flush=True)
    c, mem = report["collect"], report["memory_end"]
    memory = (
        f"peak device memory {mem['peak_bytes_in_use']:.2f} GiB"
        if "peak_bytes_in_use" in mem
        else f"peak host RSS {mem['host_peak_rss_gib']:.2f} GiB (no device memory stats)"
    )
    eighs = ", ".join(f"{k} {v:.2f} s" for k, v in eigh.items())
    mfu = f" = {100 * c['mfu']:.1f}% MFU" if c["mfu"] is not None else " (peak unknown: no MFU)"
    print(
        f"{report['device']}: collect {c['tokens']:,} tokens, {len(sites)} sites: "
        f"{c['tokens_per_s']:,.0f} tokens/s steady ({c['compile_s']:.1f} s compile), "
        f"{c['achieved_tflops']:.2f} TFLOP/s{mfu}; eigh {eighs}; "
        f"decompose {report['decompose']['wall_s']:.1f} s; edit {report['edit']['wall_s']:.1f} s; "
        f"{memory}",
        flush=True,
    )


if __name__ == "__main__":
    main()
