"""`plan`: compile a stage for a topology, check it against the chip's HBM, search the batch that
fits, and estimate step time from a roofline.

Compiled (measured by the TPU or CPU compiler): per-device argument / output / temp bytes, FLOPs,
bytes accessed, collectives. Estimated: step time = max(FLOPs / peak, bytes accessed / HBM
bandwidth, collective bytes / ICI bandwidth) per device, a lower bound that assumes perfect overlap
and peak rates; tokens/s and the time for a token budget follow from it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from kfac_mem.aot import CompiledCost, compile_cost, is_out_of_memory
from kfac_mem.collection.config import REDUCE_MODES, STEP_SCHEMES
from kfac_mem.plan.chips import GIB, Chip, chip_for
from kfac_mem.plan.devices import build_mesh, topology_devices
from kfac_mem.plan.stages import (
    STAGES,
    StageProgram,
    abstract_model,
    bsn_program,
    collect_program,
    decompose_programs,
    edit_programs,
    generate_program,
    n_data_shards,
)
from kfac_mem.sharding import load_mesh_config
from models.config import DecoderConfig
from models.sites import LinearSite


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    """What to compile. `sites` are the selected linear layers (collect, decompose, edit, bsn)."""

    config: DecoderConfig
    model_name: str
    topology: str
    stage: str
    mesh: str = "fsdp"
    mesh_sizes: tuple[tuple[str, int], ...] = ()
    num_slices: int = 1
    batch_size: int = 8
    seq_len: int = 512
    layer_ids: tuple[str, ...] = ()
    mode: str = "sampled"
    reduce: str = "auto"  # collect: "auto" (the fastest that fits), "checkpoint" or "step"
    scheme: str = "auto"  # collect, reduce "step": "auto" (per site by size), "gather", "scatter"
    max_new_tokens: int = 48
    search: bool = True
    max_search_compiles: int = 8
    token_budget: int = 20_000_000
    memory_gib: float | None = None  # per-device budget in place of the chip's HBM (headroom, CPU)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"`stage` must be one of {STAGES}, got {self.stage!r}.")
        if self.reduce not in REDUCE_MODES:
            raise ValueError(f"`reduce` must be one of {REDUCE_MODES}, got {self.reduce!r}.")
        if self.scheme not in STEP_SCHEMES:
            raise ValueError(f"`scheme` must be one of {STEP_SCHEMES}, got {self.scheme!r}.")
        if self.batch_size < 1 or self.seq_len < 2:
            raise ValueError("`batch_size` must be >= 1 and `seq_len` >= 2.")


@dataclasses.dataclass
class ProgramResult:
    name: str
    batch_size: int | None
    tokens: int
    note: str
    cost: CompiledCost | None
    fits: bool | None  # None: no HBM budget (cpu)
    error: str | None = None

    def to_dict(self, chip: Chip | None, budget: int) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "batch_size": self.batch_size,
            "tokens_per_call": self.tokens,
            "note": self.note,
            "fits": self.fits,
            "error": self.error,
        }
        if self.cost is not None:
            d["compiled"] = self.cost.to_dict()
            d["estimate"] = roofline(self.cost, chip, self.tokens, budget)
        return d


def roofline(
    cost: CompiledCost, chip: Chip | None, tokens: int, budget: int
) -> dict[str, Any] | None:
    """ESTIMATE (not measured): per-device step time as the largest of compute, HBM and ICI time at
    peak rates, and the tokens/s and time for `budget` tokens it implies."""
    if chip is None or cost.flops is None or not chip.bf16_flops:
        return None
    t_compute = cost.flops / chip.bf16_flops
    t_hbm = (cost.bytes_accessed or 0.0) / chip.hbm_bandwidth
    t_ici = cost.collective_bytes / chip.ici_bandwidth
    step = max(t_compute, t_hbm, t_ici)
    bound = {t_compute: "compute", t_hbm: "HBM bandwidth", t_ici: "ICI"}[step]
    out: dict[str, Any] = {
        "label": "estimate (roofline at peak rates, perfect overlap; a lower bound on time)",
        "step_seconds": step,
        "compute_seconds": t_compute,
        "hbm_seconds": t_hbm,
        "ici_seconds": t_ici,
        "bound_by": bound,
        "chip": dataclasses.asdict(chip),
    }
    if tokens and step > 0:
        tps = tokens / step
        out["tokens_per_second"] = tps
        out["budget_tokens"] = budget
        out["budget_seconds"] = budget / tps
    return out


def _fits(cost: CompiledCost, chip: Chip | None) -> bool | None:
    return None if chip is None else cost.total_bytes <= chip.hbm_bytes


def _try(program: StageProgram, chip: Chip | None) -> ProgramResult:
    try:
        cost = compile_cost(program.fn, *program.args)
    except Exception as e:
        if is_out_of_memory(e):
            first = next((ln for ln in str(e).splitlines() if ln.strip()), str(e))
            return ProgramResult(
                program.name,
                program.batch_size,
                program.tokens,
                program.describe(),
                None,
                False,
                f"compiler: out of memory ({first[:300]})",
            )
        raise
    return ProgramResult(
        program.name,
        program.batch_size,
        program.tokens,
        program.describe(),
        cost,
        _fits(cost, chip),
    )


def largest_batch(
    build: Callable[[int], StageProgram],
    chip: Chip | None,
    start: int,
    multiple: int,
    max_compiles: int = 8,
    first: ProgramResult | None = None,
) -> tuple[int | None, list[ProgramResult]]:
    """Largest batch (a multiple of `multiple`) whose compiled program fits the chip's HBM.

    Every candidate is compiled; the next candidate is predicted from the two nearest compiled
    totals (per-device memory is close to affine in the batch), else found by doubling from
    `start` / bisection. Stops when the fitting and failing batches are `multiple` apart or after
    `max_compiles` compiles. Returns (batch, or None when no batch tried fits; every result).
    """
    if chip is None:
        return None, []
    tried: dict[int, ProgramResult] = {}
    if first is not None and first.batch_size is not None:
        tried[first.batch_size] = first

    def fits(b: int) -> bool:
        if b not in tried:
            tried[b] = _try(build(b), chip)
        return bool(tried[b].fits)

    def down(x: float) -> int:
        return max(multiple, int(x) - int(x) % multiple)

    b = down(start)
    while len(tried) < max_compiles or b in tried:
        fits(b)
        ok = sorted(k for k, t in tried.items() if t.fits)
        bad = sorted(k for k, t in tried.items() if not t.fits)
        lo, hi = (ok[-1] if ok else None), (bad[0] if bad else None)
        if (lo is not None and hi is not None and hi - lo <= multiple) or (
            hi == multiple and lo is None
        ):
            break
        measured = sorted((k, t.cost.total_bytes) for k, t in tried.items() if t.cost is not None)
        guess = None
        if len(measured) >= 2:
            (b1, t1), (b2, t2) = measured[-2], measured[-1]
            if lo is not None:  # fit through the largest fitting point and its neighbour
                near = sorted(measured, key=lambda kt: abs(kt[0] - lo))[:2]
                (b1, t1), (b2, t2) = sorted(near)
            slope = (t2 - t1) / (b2 - b1) if b2 != b1 else 0.0
            if slope > 0:
                guess = down(b1 + (chip.hbm_bytes - t1) / slope)
        if (
            guess is None
            or guess in tried
            or not ((lo is None or guess > lo) and (hi is None or guess < hi))
        ):
            if hi is None:
                guess = 2 * lo
            elif lo is None:
                guess = down(hi // 2)
            else:
                guess = down((lo + hi) // 2)
        if guess in tried or (lo is not None and guess <= lo):
            break
        b = guess
        if len(tried) >= max_compiles:
            break
    ok = [k for k, t in tried.items() if t.fits]
    return (max(ok) if ok else None), [tried[k] for k in sorted(tried)]


def _search_complete(best: int | None, tried: list[ProgramResult], multiple: int) -> bool:
    """Whether the search bracketed the answer (a fitting batch and one `multiple` above failing)."""
    bad = [t.batch_size for t in tried if t.fits is False]
    if best is None:
        return multiple in bad
    return any(b - best <= multiple and b > best for b in bad)


def _batched(
    build: Callable[[int], StageProgram], b: int, chip: Chip | None, n_data: int, r: PlanRequest
) -> tuple[list[ProgramResult], dict[str, Any] | None]:
    """The program at batch `b`, and (with `r.search`) the largest batch that fits."""
    results = [_try(build(b), chip)]
    if not (r.search and chip is not None):
        return results, None
    best, tried = largest_batch(build, chip, b, n_data, r.max_search_compiles, first=results[0])
    search = {
        "largest_fitting_batch": best,
        "multiple_of": n_data,
        "tried": [
            {
                "batch_size": t.batch_size,
                "fits": t.fits,
                "total_bytes": t.cost.total_bytes if t.cost else None,
            }
            for t in tried
        ],
        "complete": _search_complete(best, tried, n_data),
    }
    best_result = next((t for t in tried if t.batch_size == best), None)
    if best_result is not None and best != b:
        results.append(best_result)
    return results, search


def _reduce_choice(
    requested: str, chosen: str, per_mode: dict[str, Any], batch: int
) -> dict[str, Any]:
    """Which reduce mode the plan reports, why, and what each compiled mode needed."""
    modes = {}
    for mode, m in per_mode.items():
        first = m["results"][0]
        modes[mode] = {
            "fits": first.fits,
            "total_bytes": first.cost.total_bytes if first.cost else None,
            "largest_fitting_batch": (m["search"] or {}).get("largest_fitting_batch"),
        }
    if requested != "auto":
        why = f"requested (reduce={requested})"
    elif chosen == "checkpoint" and modes["checkpoint"]["fits"] is None:
        why = "no memory budget known for this device: checkpoint, the fastest"
    elif chosen == "checkpoint":
        why = f"checkpoint fits at batch {batch} and needs no per-step communication"
    elif modes["step"]["fits"]:
        why = f"checkpoint does not fit at batch {batch} (a full partial sum per data shard)"
    else:
        why = f"neither mode fits at batch {batch}; step needs less memory"
    return {"requested": requested, "chosen": chosen, "why": why, "modes": modes}


def run_plan(request: PlanRequest, sites: Sequence[LinearSite]) -> dict[str, Any]:
    """Compile `request.stage` and return the JSON-able plan (see `kfac_mem.plan.report`)."""
    import time

    t0 = time.perf_counter()
    r = request
    devices = topology_devices(r.topology, r.num_slices)
    chip = chip_for(r.topology)
    if r.memory_gib is not None:
        budget_bytes = int(r.memory_gib * GIB)
        chip = (
            Chip("cpu", 0.0, budget_bytes, 0.0, 0.0, "memory budget given by the caller")
            if chip is None
            else dataclasses.replace(chip, hbm_bytes=budget_bytes)
        )
    mesh_cfg = load_mesh_config(r.mesh)
    if r.mesh_sizes:
        mesh_cfg = mesh_cfg.with_sizes(**dict(r.mesh_sizes))
    mesh = build_mesh(mesh_cfg, devices, r.num_slices)
    rules = mesh_cfg.rules
    n_data = n_data_shards(mesh, rules)
    model = abstract_model(r.config, mesh, rules)
    budget = r.token_budget

    def build(b: int, reduce: str = "step") -> StageProgram:
        if r.stage == "collect":
            return collect_program(model, sites, b, r.seq_len, r.mode, reduce, scheme=r.scheme)
        if r.stage == "generate":
            return generate_program(model, b, r.seq_len, r.max_new_tokens)
        return bsn_program(model, sites, b, r.seq_len)

    results: list[ProgramResult] = []
    search: dict[str, Any] | None = None
    reduce_choice: dict[str, Any] | None = None
    if r.stage in ("collect", "generate", "bsn"):
        b = r.batch_size
        if b % n_data:
            raise ValueError(
                f"`batch_size` {b} must be a multiple of the {n_data} data shards of mesh "
                f"{dict(mesh.shape)} (collection splits every batch evenly)."
            )
        if r.stage != "collect":
            results, search = _batched(build, b, chip, n_data, r)
        else:
            # "checkpoint" is the fastest (no per-step communication); "auto" falls back to "step"
            # when it does not fit, as `collect` does (`kfac_mem.collection`, reduce modes).
            modes = ("checkpoint", "step") if r.reduce == "auto" else (r.reduce,)
            per_mode: dict[str, Any] = {}
            for mode in modes:
                res, srch = _batched(functools.partial(build, reduce=mode), b, chip, n_data, r)
                per_mode[mode] = {"results": res, "search": srch}
                if r.reduce == "auto" and res[0].fits is not False:
                    break
            chosen = next(
                (m for m in per_mode if per_mode[m]["results"][0].fits is not False),
                list(per_mode)[-1],
            )
            results, search = per_mode[chosen]["results"], per_mode[chosen]["search"]
            reduce_choice = _reduce_choice(r.reduce, chosen, per_mode, b)
    elif r.stage == "decompose":
        results = [_try(p, chip) for p in decompose_programs(sites, mesh, rules)]
    else:  # edit
        results = [_try(p, chip) for p in edit_programs(sites, devices[0])]
    return {
        "model": r.model_name,
        "model_config": r.config.to_dict(),
        "parameters": r.config.num_params(),
        "topology": r.topology,
        "num_slices": r.num_slices,
        "devices": len(devices),
        "processes": len({getattr(d, "process_index", 0) for d in devices}),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "chip": None if chip is None else dataclasses.asdict(chip),
        "mesh": r.mesh,
        "mesh_shape": dict(mesh.shape),
        "stage": r.stage,
        "seq_len": r.seq_len,
        "sites": [s.id for s in sites],
        "mode": r.mode,
        "reduce": r.reduce if reduce_choice is None else reduce_choice["chosen"],
        "reduce_choice": reduce_choice,
        "programs": [x.to_dict(chip, budget) for x in results],
        "batch_search": search,
        "seconds": time.perf_counter() - t0,
        "jax": jax.__version__,
    }
