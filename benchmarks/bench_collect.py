"""Collection cost against a plain training step, memory against batch and tokens, 1 vs N devices.

Usage:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/bench_collect.py [--quick]
      [--reduce checkpoint|step] [--scheme auto|gather|scatter]
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/bench_collect.py --reduce-modes

Prints one JSON line per measurement:
  * ratio: one collection step (sampled labels) / one jitted value_and_grad step of the summed
    next-token loss over all parameters, same model, batch and mesh; for all MLP matrices of all
    blocks and for the paper's 3-layer gate/up selection. Times are the median of `--repeats`
    steps after compilation.
  * memory: XLA's compiled temp + argument + output bytes of one step (what the step needs beyond
    the parameters), against batch size, and the process's peak RSS after 1, 4 and 16 steps
    (flat in the number of tokens: sums are fixed-size).
  * devices: tokens/s on 1 device vs all devices (simulated CPU devices share the same cores, so
    this shows overheads, not speed-up).
  * reduce_modes (`--reduce-modes` alone): the collection step under `reduce=checkpoint`,
    `step` with every site by all-gathered row blocks (`gather`) and `step` with full outer products
    reduce-scattered (`scatter`), compiled once each and then timed in interleaved rounds (so load
    on a shared machine hits all three alike); median per mode and its ratio to checkpoint.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from kfac_mem.collection.accumulate import factor_shardings, make_step, partial_shardings, zero_sums
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.sites import select_sites
from kfac_mem.sharding import logical_to_sharding, make_mesh
from models import DecoderConfig, LanguageModel, init_params

BENCH = DecoderConfig(
    family="olmo2",
    vocab_size=16384,
    hidden_size=512,
    intermediate_size=1536,
    num_layers=8,
    num_heads=8,
    num_kv_heads=8,
    head_dim=64,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=1024,
)


def timed(fn, repeats):
    fn()  # compile + warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def emit(**row):
    row = {**REDUCE, **row}
    row.update(
        machine=f"{platform.machine()} {jax.devices()[0].platform} x{jax.device_count()}",
        cpu_count=__import__("os").cpu_count(),
    )
    print(json.dumps(row), flush=True)


def setup(devices, batch, seq):
    mesh, rules = make_mesh("fsdp", devices=devices)
    model = LanguageModel(BENCH, init_params(BENCH, 0, mesh, rules), None, mesh, rules)
    sharding = logical_to_sharding(("activation_batch", None), (batch, seq), mesh, rules)
    tokens = jax.device_put(
        jnp.asarray(np.random.RandomState(0).randint(0, BENCH.vocab_size, (batch, seq)), jnp.int32),
        sharding,
    )
    return model, tokens, len(devices)


def train_step(model):
    def loss(params, tokens):
        inputs, labels, weights = model.loss_targets(tokens)
        logits = model.apply(params, inputs)[0]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.sum(jnp.take_along_axis(logp, labels[..., None], -1)[..., 0] * weights)

    return jax.jit(jax.value_and_grad(loss))


REDUCE = {"reduce": "checkpoint", "scheme": "auto"}  # set from --reduce / --scheme


def collect_step(model, sites, batch, n_data, reduce=None):
    cfg = CollectConfig(mode="sampled", batch_size=batch, vocab_chunk=4096, **(reduce or REDUCE))
    if cfg.reduce == "checkpoint":
        sh, lead = partial_shardings(sites, model.mesh, model.rules), n_data
    else:
        sh, lead = factor_shardings(sites, model.mesh, model.rules), None
    step = make_step(model, sites, cfg, sh, n_data)
    state = {"sums": zero_sums(sites, "float32", sh, leading=lead)}

    key = jax.random.key(0)
    n_valid = jnp.int32(batch)

    def run(tokens):
        state["sums"], stats = step(state["sums"], model.params, tokens, key, n_valid)
        return stats["count"]

    return step, state, run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reduce", default="checkpoint", choices=("checkpoint", "step"))
    p.add_argument("--scheme", default="auto", choices=("auto", "gather", "scatter"))
    p.add_argument("--reduce-modes", action="store_true", help="only time the reduce modes")
    args = p.parse_args()
    REDUCE.update(reduce=args.reduce, scheme=args.scheme)
    repeats = 2 if args.quick else args.repeats
    seq, batch = 256, 8
    model, tokens, n = setup(jax.devices(), batch, seq)
    if args.reduce_modes:
        return reduce_modes(model, tokens, batch, n, repeats)
    train = train_step(model)
    t_train = timed(lambda: train(model.params, tokens), repeats)
    emit(kind="train_step", seconds=t_train, tokens=batch * seq, devices=n)
    selections = {
        "all_mlp": select_sites(model.linear_sites(), projections=["gate", "up", "down"]),
        "3_layers_gate_up": select_sites(
            model.linear_sites(), layers=[5, 6, 7], projections=["gate", "up"]
        ),
    }
    for name, sites in selections.items():
        _, _, run = collect_step(model, sites, batch, n)
        t = timed(lambda run=run: run(tokens), repeats)
        emit(
            kind="collect_vs_train",
            selection=name,
            seconds=t,
            ratio=t / t_train,
            tokens_per_s=batch * seq / t,
            devices=n,
        )
    # Memory: compiled step footprint vs batch size.
    sites = selections["3_layers_gate_up"]
    for b in [8, 16] if args.quick else [8, 16, 32]:
        m, toks, n_b = setup(jax.devices(), b, seq)
        step, state, _ = collect_step(m, sites, b, n_b)
        mem = (
            step.lower(state["sums"], m.params, toks, jax.random.key(0), jnp.int32(b))
            .compile()
            .memory_analysis()
        )
        emit(
            kind="memory_vs_batch",
            batch=b,
            temp_bytes=mem.temp_size_in_bytes,
            argument_bytes=mem.argument_size_in_bytes,
            output_bytes=mem.output_size_in_bytes,
        )
    # Memory flat in tokens: peak RSS after more and more steps of the same step function.
    _, _, run = collect_step(model, sites, batch, n)
    done = 0
    for steps in (1, 4, 16):
        while done < steps:
            jax.block_until_ready(run(tokens))
            done += 1
        emit(
            kind="rss_vs_tokens",
            tokens=done * batch * seq,
            peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    # 1 device vs all devices.
    for devs in ([jax.devices()[0]], jax.devices()):
        m, toks, n_d = setup(devs, batch, seq)
        _, _, run = collect_step(m, sites, batch, n_d)
        t = timed(lambda run=run, toks=toks: run(toks), repeats)
        emit(kind="devices", devices=len(devs), seconds=t, tokens_per_s=batch * seq / t)


MODES = {
    "checkpoint": {"reduce": "checkpoint", "scheme": "auto"},
    "step_gather": {"reduce": "step", "scheme": "gather"},
    "step_scatter": {"reduce": "step", "scheme": "scatter"},
}


def reduce_modes(model, tokens, batch: int, n: int, repeats: int) -> None:
    """Median step time of each reduce mode, timed in interleaved rounds after one compile each."""
    sites = select_sites(model.linear_sites(), projections=["gate", "up", "down"])
    runs = {name: collect_step(model, sites, batch, n, m)[2] for name, m in MODES.items()}
    for run in runs.values():
        jax.block_until_ready(run(tokens))  # compile + warm up
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(run(tokens))
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["checkpoint"])
    for name, ts in times.items():
        med = statistics.median(ts)
        emit(
            **MODES[name],
            kind="reduce_modes",
            selection="all_mlp",
            mode=name,
            seconds=med,
            ratio_to_checkpoint=med / base,
            tokens_per_s=tokens.size / med,
            repeats=repeats,
            devices=n,
        )


if __name__ == "__main__":
    main()
