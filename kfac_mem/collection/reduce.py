"""The reduce mode of a collection run, chosen from the compiled step's memory.

"auto" (default) takes the fastest mode that fits: the real step is compiled for "checkpoint" and
its per-device memory (XLA's memory analysis: arguments + outputs + temps − donated) compared with
the device's memory; if it does not fit, "step" (`accumulate`, docs/design.md §7.3). On a device
that reports no memory limit (CPU) the budget is 80% of the host's physical memory divided by the
number of local devices (they share it).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from kfac_mem.aot import CompiledCost, cost_of_compiled
from kfac_mem.collection.accumulate import (
    abstract_sums,
    factor_shardings,
    make_step,
    partial_shardings,
)
from kfac_mem.collection.config import CollectConfig
from kfac_mem.protocol import CurvatureModel
from models.sites import LinearSite

CPU_MEMORY_FRACTION = 0.8  # of host RAM, shared by the local CPU devices (the "auto" budget)


def device_memory_budget(device: jax.Device | None = None) -> tuple[int, str]:
    """(bytes one device may use, where that figure comes from): the runtime's `bytes_limit`
    where the device reports one (TPU, GPU), else (CPU) `CPU_MEMORY_FRACTION` of the host's
    physical memory shared by its local devices."""
    device = jax.local_devices()[0] if device is None else device
    try:
        stats = device.memory_stats() or {}
    except Exception:  # compile-only or backends without the query
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} bytes_limit"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    n_local = max(1, jax.local_device_count(device.platform))
    budget = int(CPU_MEMORY_FRACTION * ram / n_local)
    return (
        budget,
        f"{CPU_MEMORY_FRACTION:.0%} of {ram / 2**30:.1f} GiB host RAM / {n_local} devices",
    )


@dataclasses.dataclass(frozen=True)
class ReduceChoice:
    """The reduce mode a run uses, why, and the compiled per-device cost of its step."""

    mode: str
    reason: str
    cost: CompiledCost
    budget_bytes: int | None
    schemes: dict[str, str]
    compiled: Any = dataclasses.field(default=None, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (written into the run's metadata)."""
        return {
            "mode": self.mode,
            "reason": self.reason,
            "per_device_bytes": self.cost.total_bytes,
            "temp_bytes": self.cost.temp_bytes,
            "argument_bytes": self.cost.argument_bytes,
            "budget_bytes": self.budget_bytes,
            "schemes": dict(self.schemes),
        }


def compile_step(
    model: CurvatureModel,
    sites: Sequence[LinearSite],
    config: CollectConfig,
    reduce: str,
    batch: Any,
    n_data: int,
    engine: str = "native",
) -> tuple[Any, CompiledCost, dict[str, str]]:
    """Compile the real collection step for `reduce` ("checkpoint" | "step") and `batch` (arrays
    or ShapeDtypeStructs with shardings; `model.params` may be abstract too). Returns (compiled
    step, its per-device CompiledCost, {name: scheme})."""
    mesh, rules = model.mesh, model.rules
    if reduce == "checkpoint":
        sh, lead = partial_shardings(sites, mesh, rules), n_data
    else:
        sh, lead = factor_shardings(sites, mesh, rules), None
    record: dict[str, str] = {}
    step = engine_step(
        engine, model, sites, dataclasses.replace(config, reduce=reduce), sh, n_data, record
    )
    key = jax.eval_shape(lambda: jax.random.key(0))
    n_valid = jax.ShapeDtypeStruct((), jnp.int32)
    sums = abstract_sums(sites, config.accumulate_dtype, sh, lead)
    compiled = step.lower(sums, model.params, batch, key, n_valid).compile()
    return compiled, cost_of_compiled(compiled), record


def choose_reduce(
    model: CurvatureModel,
    sites: Sequence[LinearSite],
    config: CollectConfig,
    batch: Any,
    n_data: int,
    engine: str = "native",
    budget_bytes: int | None = None,
) -> ReduceChoice:
    """The reduce mode for `config.reduce` ("auto": the fastest that fits; module docstring),
    with the compiled step. `budget_bytes` defaults to `device_memory_budget()`. Raises a
    ValueError naming `batch_size` when even "step" does not fit."""
    budget, source = (
        device_memory_budget() if budget_bytes is None else (budget_bytes, "given budget")
    )
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    forced = None
    if engine == "kfac-jax":
        forced = "step", "the kfac-jax engine yields reduced batch factors"
    elif n_data == 1:
        forced = "step", "one data shard: nothing to defer"
    elif config.reduce != "auto":
        forced = config.reduce, "requested"
    if forced is not None:
        compiled, cost, schemes = compile_step(
            model, sites, config, forced[0], batch, n_data, engine
        )
        return ReduceChoice(forced[0], forced[1], cost, budget, schemes, compiled)
    fits = {}
    for mode in ("checkpoint", "step"):
        compiled, cost, schemes, refused = _compile_or_refusal(
            model, sites, config, mode, batch, n_data, engine
        )
        fits[mode] = refused or gib(cost.total_bytes)
        if refused is None and cost.total_bytes <= budget:
            if mode == "checkpoint":
                reason = (
                    f"fastest; fits: {gib(cost.total_bytes)} per device of {gib(budget)} ({source})"
                )
            else:
                reason = (
                    f"checkpoint needs {fits['checkpoint']} per device, over {gib(budget)} "
                    f"({source}); step needs {gib(cost.total_bytes)}"
                )
            return ReduceChoice(mode, reason, cost, budget, schemes, compiled)
    raise ValueError(
        f"`batch_size` {config.batch_size} does not fit: even `reduce` 'step' needs "
        f"{fits['step']} per device of {gib(budget)} ({source}). Give a smaller `batch_size`, "
        f"fewer layers, or more devices."
    )


def _compile_or_refusal(model, sites, config, mode, batch, n_data, engine):
    """compile_step, or (None, None, {}, the compiler's message) where the compiler itself refuses
    the program for exceeding device memory (the TPU compiler does)."""
    try:
        return (*compile_step(model, sites, config, mode, batch, n_data, engine), None)
    except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED at compile time
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
            raise
        m = re.search(r"Used ([\d.]+[GMK]) of ([\d.]+[GMK]) hbm", text)
        return None, None, {}, (f"{m[1]} of {m[2]} HBM (compiler)" if m else "over HBM (compiler)")


def engine_step(engine, model, sites, config, shardings, n_data, record=None):
    """The jitted step of `engine` ("native" or "kfac-jax") for `make_step`'s arguments."""
    if engine == "native":
        return make_step(model, sites, config, shardings, n_data, record=record)
    if engine == "kfac-jax":
        from kfac_mem.collection.kfac_jax_engine import make_kfac_jax_step

        return make_kfac_jax_step(model, sites, config, shardings, n_data)
    raise ValueError(f"`engine` must be 'native' or 'kfac-jax', got {engine!r}.")
