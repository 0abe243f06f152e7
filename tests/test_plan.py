"""`kfac-mem plan` and `kfac_mem.aot`: the TPU compiler's memory/cost analyses for the real
collection step, its collectives against the CPU-simulated compile, the HLO collective parser,
the batch search, and attention through `jax.nn.dot_product_attention`."""

from __future__ import annotations

import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

from kfac_mem.aot import collectives_in_hlo, compile_cost
from kfac_mem.collection.sites import select_sites
from kfac_mem.plan import Chip, build_mesh, largest_batch, topology_devices
from kfac_mem.plan.stages import abstract_model, collect_program
from kfac_mem.sharding import load_mesh_config
from models import LanguageModel, get_config, load_pretrained
from models.attention import attend, attention_mask
from models.sites import decoder_sites

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None

HLO = """
  %all-reduce.6 = (f32[64,64]{1,0}, f32[128,128]{1,0}, f32[], f32[]) all-reduce(%a, %b, %c, %d), channel_id=1
  %ag = bf16[8,256]{1,0:T(8,128)(2,1)} all-gather(bf16[1,256]{1,0} %p), dimensions={0}
  %ags = (bf16[1,256]{1,0}, bf16[8,256]{1,0}) all-gather-start(bf16[1,256]{1,0} %q), dimensions={0}
  %agd = bf16[8,256]{1,0} all-gather-done((bf16[1,256]{1,0}, bf16[8,256]{1,0}) %ags)
  %rs = f32[16,128]{1,0} reduce-scatter(f32[128,128]{1,0} %x), dimensions={0}
"""


def test_collectives_parser_counts_kinds_and_result_bytes():
    c = collectives_in_hlo(HLO)
    assert set(c) == {"all-reduce", "all-gather", "reduce-scatter"}
    assert c["all-reduce"].count == 1 and c["all-reduce"].bytes == (64 * 64 + 128 * 128 + 2) * 4
    # the async start counts once, at its output buffer; the -done is not counted again
    assert c["all-gather"].count == 2 and c["all-gather"].bytes == 2 * 8 * 256 * 2
    assert c["reduce-scatter"].bytes == 16 * 128 * 4


def _factor_reductions(cost, d: int) -> int:
    """Reduction collectives (all-reduce / reduce-scatter) at least as large as one row-sharded
    [d/8, d] float32 factor."""
    return sum(
        c.count
        for k, c in cost.collectives.items()
        if k in ("all-reduce", "reduce-scatter") and c.largest_bytes >= d * d * 4 // 8
    )


def _tiny_collect(topology: str, reduce: str, scheme: str = "auto"):
    devices = topology_devices(topology)
    mesh = build_mesh(load_mesh_config("fsdp"), devices)
    rules = load_mesh_config("fsdp").rules
    config = get_config("tiny-olmo2").replace(dtype="bfloat16", param_dtype="bfloat16")
    model = abstract_model(config, mesh, rules)
    sites = select_sites(model.linear_sites(), layers=[1], projections=["gate", "up"])
    prog = collect_program(model, sites, 8, 16, reduce=reduce, vocab_chunk=64, scheme=scheme)
    return compile_cost(prog.fn, *prog.args), sites


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu is not installed (pip install 'kfac-mem[tpu]')")
def test_tpu_aot_compile_of_collection_step_matches_cpu_collectives():
    tpu, sites = _tiny_collect("v5e:2x2", "step", "scatter")
    cpu, _ = _tiny_collect("cpu:4", "step", "scatter")
    assert tpu.platform == "tpu" and tpu.devices == 4 and cpu.platform == "cpu"
    for cost in (tpu, cpu):
        assert cost.argument_bytes > 0 and cost.output_bytes > 0 and cost.total_bytes > 0
        assert cost.flops and cost.flops > 0 and cost.bytes_accessed and cost.bytes_accessed > 0
    # Sums are donated: the compiler aliases them to the outputs.
    assert tpu.alias_bytes > 0
    # reduce=step, scatter scheme: the factor reduction happens inside the step on both compilers.
    d = sites[0].d_out
    assert _factor_reductions(tpu, d) >= 1 and _factor_reductions(cpu, d) >= 1
    # gather scheme: activations are gathered instead, and no factor-sized reduction remains.
    for platform in ("v5e:2x2", "cpu:4"):
        gather, _ = _tiny_collect(platform, "step", "gather")
        assert _factor_reductions(gather, d) == 0 and "all-gather" in gather.collectives
    # FSDP: parameters are all-gathered on both.
    assert "all-gather" in tpu.collectives and "all-gather" in cpu.collectives


def test_auto_reduce_takes_checkpoint_when_it_fits_else_step():
    """`plan --reduce auto` on real CPU compiles of the tiny collection step: with a budget
    between the two modes' compiled totals it reports "step" and why; with room for both,
    "checkpoint" (no per-step communication)."""
    from kfac_mem.plan import PlanRequest, run_plan
    from kfac_mem.plan.chips import GIB

    config = get_config("tiny-olmo2")
    sites = select_sites(decoder_sites(config), layers=[1], projections=["up"])

    def plan(reduce, memory_gib=None):
        request = PlanRequest(
            config, "tiny-olmo2", "cpu:8", "collect", batch_size=8, seq_len=64,
            layer_ids=tuple(s.id for s in sites), reduce=reduce, search=False,
            memory_gib=memory_gib,
        )  # fmt: skip
        return run_plan(request, sites)

    total = {m: plan(m)["programs"][0]["compiled"]["total_bytes"] for m in ("checkpoint", "step")}
    assert total["step"] < total["checkpoint"]  # no full partial sum per data shard
    tight = plan("auto", (total["step"] + total["checkpoint"]) / 2 / GIB)
    assert tight["reduce"] == "step" and "checkpoint does not fit" in tight["reduce_choice"]["why"]
    assert tight["reduce_choice"]["modes"]["checkpoint"]["fits"] is False
    assert tight["programs"][0]["fits"] is True
    roomy = plan("auto", 2 * total["checkpoint"] / GIB)
    assert roomy["reduce"] == "checkpoint" and list(roomy["reduce_choice"]["modes"]) == [
        "checkpoint"
    ]


@pytest.mark.slow
def test_largest_batch_search_brackets_the_budget():
    """Real CPU compiles of the tiny collection step against an artificial HBM budget set between
    two batch sizes' compiled totals: the search returns the largest fitting multiple."""
    devices = topology_devices("cpu:8")
    rules = load_mesh_config("fsdp").rules
    model = abstract_model(
        get_config("tiny-olmo2"), build_mesh(load_mesh_config("fsdp"), devices), rules
    )
    sites = select_sites(model.linear_sites(), layers=[1], projections=["up"])
    build = lambda b: collect_program(model, sites, b, 64, vocab_chunk=64)  # noqa: E731
    t8 = compile_cost(*(lambda p: (p.fn, *p.args))(build(8))).total_bytes
    t32 = compile_cost(*(lambda p: (p.fn, *p.args))(build(32))).total_bytes
    assert t32 > t8
    budget = int(t8 + 0.6 * (t32 - t8))  # between 8 and 32 rows
    chip = Chip("test", 1e12, budget, 1e11, 1e10, "test")
    best, tried = largest_batch(build, chip, 8, 8, max_compiles=6)
    assert best is not None and 8 <= best < 32 and best % 8 == 0
    fits = {t.batch_size: t.fits for t in tried}
    assert fits[best] and any(b > best and not ok for b, ok in fits.items())


def test_dot_product_attention_equals_einsum_reference():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 5, 4, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 9, 2, 16)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 9, 2, 16)), jnp.float32)
    valid = jnp.asarray(rng.random((2, 9)) > 0.3).at[:, 0].set(True)
    mask = attention_mask(3 + jnp.arange(5), valid)  # queries at cache slots 3..7
    ref = attend(q, k, v, mask, jnp.float32, "einsum")
    got = attend(q, k, v, mask, jnp.float32, "xla")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-6, rtol=1e-5)


def test_model_logits_same_with_einsum_and_xla_attention():
    model = load_pretrained("tiny-olmo2", seed=1)
    ref_model = LanguageModel(model.config.replace(attention="einsum"), model.params)
    toks = np.random.RandomState(0).randint(0, 256, (2, 10))
    mask = np.ones_like(toks)
    mask[0, :3] = 0  # left padding
    got = np.asarray(model.logits(toks, attention_mask=mask))
    ref = np.asarray(ref_model.logits(toks, attention_mask=mask))
    np.testing.assert_allclose(got[mask.astype(bool)], ref[mask.astype(bool)], atol=1e-5)


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu is not installed: nothing probes a TPU")
def test_cli_start_up_on_a_host_without_tpu_is_quiet():
    """With libtpu installed and no TPU chip, JAX's start-up probe of the TPU backend logs TPU-VM
    discovery errors; `quiet_absent_tpu` (called by `kfac-mem` before any backend starts) gives
    libtpu the compile-only variables instead. Each child loads libtpu on its own
    (ALLOW_MULTIPLE_LIBTPU_LOAD), as the first process on a machine does."""
    import os
    import subprocess
    import sys

    from jax._src import hardware_utils

    if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
        pytest.skip("this host has TPU chips")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    env.update(ALLOW_MULTIPLE_LIBTPU_LOAD="1", JAX_PLATFORMS="")

    def start_up(quiet: bool) -> str:
        code = (
            "from kfac_mem.aot import quiet_absent_tpu; quiet_absent_tpu()\n" * quiet
            + "import jax; print(jax.devices()[0].platform)"
        )
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert r.returncode == 0 and r.stdout.strip() == "cpu", r.stderr
        return r.stderr

    assert "TPU_WORKER_HOSTNAMES" in start_up(quiet=False)  # what a user saw before
    assert "TPU" not in start_up(quiet=True)
