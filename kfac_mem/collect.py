"""K-FAC factor collection: one streaming pass over the data for every selected layer.

For each selected linear site with input a_t [d_in] and output gradient g_t = ∂L/∂s_t [d_out] at
position t (L = cross-entropy *summed* over the window's labelled positions), the run accumulates

    Σ_t a_t a_tᵀ  per input group (sites reading the same input share it: q/k/v, gate/up)
    Σ_t g_t g_tᵀ  per site
    n_tokens      the exact number of positions summed (Python int)

over every position with a label, i.e. every position the model's `loss_targets` gives weight 1 (the
last position of each window is excluded for a causal LM; only the CLS position counts for a ViT
classifier): the weights mask both a_t and g_t and n_tokens counts them. Means are formed only when
reading (`kfac_mem.load_factors`). Labels are sampled from the model's own softmax
(`sampled`, the Monte-Carlo true Fisher; seeded) or the gold next tokens (`empirical`).

Distribution: the step runs under `jax.jit` on a Mesh with the batch split over the n_data data
shards and parameters placed by the model's rules. The totals of each factor [d, d] are sharded by
rows over all n devices (logical axis `factor_rows`). How a step's Σ x xᵀ (x = masked activations
or output gradients of the step, N positions × d, in the activation dtype of b_x bytes; sums in
the accumulate dtype of b_acc bytes) reaches them is the reduce mode:

  "checkpoint"  each data shard adds its own tokens into its own full partial sum [n_data, d, d]
                (sharded on the leading axis): no communication per step, one full [d, d] per
                device per factor; the partials are reduced into the totals at checkpoints.
  "step"        the totals are updated every step and nothing full-size is kept. Per site, one of
                "gather":  all-gather x over the data axes (each device receives
                           (n_data−1)/n_data · N·d·b_x bytes), then each device forms only its own
                           row block x[:, rows]ᵀ x [d/n, d] (temp N·d·b_x + d²/n·b_acc);
                "scatter": each device forms the full Σ_local x xᵀ [d, d] of its own tokens and
                           XLA reduce-scatters it into the rows (each device moves
                           (n−1)/n · d²·b_acc bytes; temp d²·b_acc).
                By default a site takes "gather" when N·b_x ≤ d·b_acc (less traffic and less
                temporary memory), else "scatter" (`CollectConfig.scheme` forces one).
  "auto"        (default) the fastest mode that fits: the real step is compiled for "checkpoint"
                and its per-device memory (XLA's memory analysis: arguments + outputs + temps −
                donated) compared with the device's memory; if it does not fit, "step". On a
                device that reports no memory limit (CPU) the budget is 80% of the host's
                physical memory divided by the number of local devices (they share it).

The last batch is padded with zero-weight rows up to the batch size (and every batch up to a
multiple of n_data), so every window counts and any batch size runs on any device count.
Multi-host: every process builds the global batch from only the rows its own devices hold
(`jax.make_array_from_callback`), so each process reads its own part of the stream and the result
equals a single-process run.

The data source is token `Windows` (batch = token ids [B, L]) or `LabelledExamples` (batch =
(inputs [B, ...], labels [B]), e.g. images for `models.VisionModel`): both expose `arrays` (cut into
batches along the leading axis and sharded over the data axes the same way) and `as_batch`.

The backward pass starts at the output head and stops at the lowest selected site: only
perturbations of selected outputs are differentiated and no parameter gradient is formed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from kfac_mem import factors as fstore
from kfac_mem.aot import CompiledCost, cost_of_compiled
from kfac_mem.atomic import write_json_atomic
from kfac_mem.capture import inputs_and_output_grads
from kfac_mem.data import LabelledExamples, Windows
from kfac_mem.errors import CorruptArtifactError, NonFiniteError
from kfac_mem.head_loss import MODES
from kfac_mem.manifest import run_manifest
from kfac_mem.protocol import CurvatureModel
from kfac_mem.rundir import claim
from kfac_mem.selection import input_groups
from kfac_mem.sharding import data_axes, logical_to_sharding, logical_to_spec
from kfac_mem.validation import check_token_ids, check_window_length
from models import axes
from models.sites import LinearSite

log = logging.getLogger(__name__)

ACCUMULATE_DTYPES = ("float32", "float64")
# When per-device sums reach the row-sharded totals (module docstring): "auto" picks the fastest
# that fits; "checkpoint" (per-shard full partials, no per-step communication) is faster than
# "step" (row-sharded totals updated every step, nothing full-size per device).
REDUCE_MODES = ("auto", "checkpoint", "step")
# How "step" forms a site's row-sharded update: "gather" (all-gather activations, own row block),
# "scatter" (full local outer product, reduce-scatter), "auto" (per site by size).
STEP_SCHEMES = ("auto", "gather", "scatter")
CPU_MEMORY_FRACTION = 0.8  # of host RAM, shared by the local CPU devices (the "auto" budget)


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    mode: str = "sampled"
    seed: int = 0
    batch_size: int = 8
    accumulate_dtype: str = "float32"
    vocab_chunk: int = 8192
    save_every: int = 100  # batches between checkpoints (and always at the end)
    reduce: str = "auto"  # "auto" | "checkpoint" | "step" (module docstring)
    scheme: str = "auto"  # under reduce="step": "auto" | "gather" | "scatter" (per site)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}.")
        if self.accumulate_dtype not in ACCUMULATE_DTYPES:
            raise ValueError(f"`accumulate_dtype` must be one of {ACCUMULATE_DTYPES}.")
        if self.reduce not in REDUCE_MODES:
            raise ValueError(f"`reduce` must be one of {REDUCE_MODES}, got {self.reduce!r}.")
        if self.scheme not in STEP_SCHEMES:
            raise ValueError(f"`scheme` must be one of {STEP_SCHEMES}, got {self.scheme!r}.")
        if self.batch_size < 1 or self.save_every < 1 or self.vocab_chunk < 1:
            raise ValueError("`batch_size`, `save_every` and `vocab_chunk` must be >= 1.")


def _outer(x: jax.Array, dtype, groups: int | None = None) -> jax.Array:
    """Σ over positions of x xᵀ, accumulated in `dtype`.

    x [B, S, d] -> [d, d]; with `groups`, the batch is split into `groups` contiguous blocks (one per
    data shard) and the result is [groups, d, d] with one partial sum per block.
    """
    if dtype == jnp.float64:
        x = x.astype(jnp.float64)
    kw = dict(preferred_element_type=dtype, precision=jax.lax.Precision.HIGHEST)
    if groups is None:
        x = x.reshape(-1, x.shape[-1])
        return jnp.einsum("nd,ne->de", x, x, **kw)
    x = x.reshape(groups, -1, x.shape[-1])
    return jnp.einsum("knd,kne->kde", x, x, **kw)


def factor_shardings(sites: Sequence[LinearSite], mesh, rules) -> fstore.FactorSums:
    """Row-sharded [d, d] totals: per-device factor memory ≈ total / device count."""
    rows = lambda d: logical_to_sharding((axes.FACTOR_ROWS, None), (d, d), mesh, rules)  # noqa: E731
    groups = input_groups(sites)
    return fstore.FactorSums(
        {g: rows(s.d_in) for g, s in groups.items()}, {s.id: rows(s.d_out) for s in sites}
    )


def partial_shardings(sites: Sequence[LinearSite], mesh, rules) -> fstore.FactorSums:
    """[n_data, d, d] per-data-shard partial sums, sharded on the leading axis."""
    spec = jax.sharding.PartitionSpec(data_axes(mesh, rules) or None)
    sh = jax.sharding.NamedSharding(mesh, spec)
    groups = input_groups(sites)
    return fstore.FactorSums({g: sh for g in groups}, {s.id: sh for s in sites})


def zero_sums(
    sites: Sequence[LinearSite],
    dtype: str,
    shardings: fstore.FactorSums,
    leading: int | None = None,
) -> fstore.FactorSums:
    groups = input_groups(sites)
    lead = () if leading is None else (leading,)
    make = lambda d, sh: jax.jit(lambda: jnp.zeros((*lead, d, d), dtype), out_shardings=sh)()  # noqa: E731
    return fstore.FactorSums(
        {g: make(s.d_in, shardings.A[g]) for g, s in groups.items()},
        {s.id: make(s.d_out, shardings.G[s.id]) for s in sites},
    )


def step_scheme(n_positions: int, d: int, x_dtype, acc_dtype, requested: str = "auto") -> str:
    """ "gather" or "scatter" for one site under reduce="step" (module docstring): "gather" when
    the step's N·b_x bytes per row are at most d·b_acc, i.e. when the all-gathered activations
    [N, d] are no larger than the full outer product [d, d] that "scatter" would form."""
    if requested != "auto":
        return requested
    x_bytes, acc_bytes = jnp.dtype(x_dtype).itemsize, jnp.dtype(acc_dtype).itemsize
    return "gather" if n_positions * x_bytes <= d * acc_bytes else "scatter"


def _spec_axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _gathered_row_block(x: jax.Array, dtype, mesh, batch_spec, row_spec) -> jax.Array:
    """Σ over positions of x xᵀ [d, d] sharded by rows as `row_spec`, with no device forming more
    than its own row block: x [B, S, d] (batch sharded as `batch_spec`) is all-gathered over the
    batch axes, then each device computes x[:, rows]ᵀ x for its rows."""
    d = x.shape[-1]
    batch_axes, row_axes = _spec_axes(batch_spec), _spec_axes(row_spec)
    n_blocks = math.prod(mesh.shape[a] for a in row_axes)
    block = d // n_blocks
    kw = dict(preferred_element_type=dtype, precision=jax.lax.Precision.HIGHEST)

    def local(xl):
        xl = xl.reshape(-1, d)
        if batch_axes:
            xl = jax.lax.all_gather(xl, batch_axes, axis=0, tiled=True)
        if dtype == jnp.float64:
            xl = xl.astype(jnp.float64)
        rows = xl
        if row_axes:
            r = jax.lax.axis_index(row_axes)
            rows = jax.lax.dynamic_slice_in_dim(xl, r * block, block, axis=1)
        return jnp.einsum("nd,ne->de", rows, xl, **kw)

    P = jax.sharding.PartitionSpec
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=P(batch_spec, *([None] * (x.ndim - 1))),
        out_specs=P(row_spec, None),
    )(x)


def make_step(
    model: CurvatureModel,
    sites: Sequence[LinearSite],
    config: CollectConfig,
    shardings: fstore.FactorSums,
    n_data: int = 1,
    reduce: str | None = None,
    record: dict[str, str] | None = None,
) -> Callable:
    """The jitted update (sums, params, batch, key, n_valid) -> (sums, stats), donating `sums`.

    `reduce` ("checkpoint" | "step"; default `config.reduce`, which must then not be "auto"):
    with "step", `sums` are the row-sharded totals [d, d] and each site is updated by
    `step_scheme` ("gather" or "scatter", module docstring); with "checkpoint", `sums` are the
    [n_data, d, d] per-shard partials (`n_data` = number of data shards), which need no
    communication. `n_valid` (int32 scalar): only the first `n_valid` rows of the batch count (the
    rest are padding, weight 0). `record`, if given, receives {name: scheme} when the step is
    traced. stats: {"loss": summed CE, "count": positions added, "finite": {name: bool}} where
    names are the input groups (A) and the site ids (G).
    """
    groups = input_groups(sites)
    acc = jnp.dtype(config.accumulate_dtype)
    reduce = config.reduce if reduce is None else reduce
    if reduce not in ("checkpoint", "step"):
        raise ValueError(f"`reduce` must be 'checkpoint' or 'step' here, got {reduce!r}.")
    mesh, rules = model.mesh, model.rules
    record = {} if record is None else record

    def update(name, total, x, sharding):
        if reduce == "checkpoint":
            record[name] = "partials"
            return total + _outer(x, acc, n_data)
        n_positions = math.prod(x.shape[:-1])
        scheme = step_scheme(n_positions, x.shape[-1], x.dtype, acc, config.scheme)
        row_spec = getattr(sharding, "spec", None)
        if mesh is None or mesh.size == 1 or not row_spec:
            scheme = "scatter"  # one device: the plain outer product is already "its rows"
        record[name] = scheme
        if scheme == "scatter":
            return total + _outer(x, acc)
        batch_spec = logical_to_spec((axes.ACT_BATCH,), (x.shape[0],), mesh, rules)[0]
        return total + _gathered_row_block(x, acc, mesh, batch_spec, row_spec[0])

    def step(sums: fstore.FactorSums, params, batch, key, n_valid):
        inputs, labels, weights = model.loss_targets(batch)
        rows = jnp.arange(weights.shape[0]) < n_valid
        weights = weights * rows.reshape((-1,) + (1,) * (weights.ndim - 1)).astype(weights.dtype)
        acts, grads, loss = inputs_and_output_grads(
            model, params, inputs, labels, weights, sites, config.mode, key, config.vocab_chunk
        )
        mask = weights[..., None]
        new_A, new_G, finite = {}, {}, {}
        for group in groups:
            a = acts[group] * mask.astype(acts[group].dtype)
            finite[group] = jnp.all(jnp.isfinite(a))
            new_A[group] = update(group, sums.A[group], a, shardings.A[group])
        for site in sites:
            g = grads[site.id] * mask.astype(grads[site.id].dtype)
            finite[site.id] = jnp.all(jnp.isfinite(g))
            new_G[site.id] = update(site.id, sums.G[site.id], g, shardings.G[site.id])
        stats = {"loss": loss, "count": jnp.sum(weights), "finite": finite}
        return fstore.FactorSums(new_A, new_G), stats

    return jax.jit(step, donate_argnums=0, out_shardings=(shardings, None))


def make_fold(totals_sharding: fstore.FactorSums, partials_sharding: fstore.FactorSums) -> Callable:
    """(totals, partials) -> (totals + Σ_shards partials, zeros): the one reduction per checkpoint."""

    def fold(totals, partials):
        new = jax.tree_util.tree_map(lambda t, p: t + p.sum(0), totals, partials)
        return new, jax.tree_util.tree_map(jnp.zeros_like, partials)

    return jax.jit(fold, donate_argnums=(0, 1), out_shardings=(totals_sharding, partials_sharding))


def batch_array(
    windows: np.ndarray,
    start: int,
    batch_size: int,
    sharding,
    dtype=np.int32,
    n_valid: int | None = None,
) -> jax.Array:
    """Global [batch_size, ...] batch of windows[start:start+n_valid] (token windows [n, L] or any
    per-item array, e.g. images [n, H, W, C] or labels [n]) in `dtype`, padded with zero rows up to
    `batch_size` (`n_valid` defaults to `batch_size`); each process reads only the rows its
    addressable devices hold."""
    shape = (batch_size, *windows.shape[1:])
    end = start + (batch_size if n_valid is None else n_valid)

    def rows(index):
        r = index[0]
        lo = start + (r.start or 0)
        hi = start + (batch_size if r.stop is None else r.stop)
        out = np.zeros((hi - lo, *windows.shape[1:]), dtype)
        if lo < end:
            out[: min(hi, end) - lo] = windows[lo : min(hi, end)]
        return out[(slice(None), *index[1:])]

    return jax.make_array_from_callback(shape, sharding, rows)


def batch_shardings(data: Windows | LabelledExamples, batch_size: int, mesh, rules) -> list:
    """One sharding per array of the data source: the leading (batch) axis over the data axes."""
    return [
        logical_to_sharding(
            (axes.ACT_BATCH,) + (None,) * (a.ndim - 1), (batch_size, *a.shape[1:]), mesh, rules
        )
        for a in data.arrays
    ]


def global_batch(
    data: Windows | LabelledExamples,
    start: int,
    batch_size: int,
    shardings: Sequence,
    n_valid: int | None = None,
) -> Any:
    """The model's batch for items [start, start + n_valid) of `data`, zero-padded to
    `batch_size` rows and sharded over the mesh (integer arrays as int32, the rest as float32)."""
    arrays = [
        batch_array(
            a,
            start,
            batch_size,
            sh,
            np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32,
            n_valid,
        )
        for a, sh in zip(data.arrays, shardings, strict=True)
    ]
    return data.as_batch(arrays)


def step_batch_size(batch_size: int, n_data: int) -> int:
    """Rows of the compiled step: `batch_size` rounded up to a multiple of the data shards."""
    return -(-batch_size // n_data) * n_data


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


def abstract_sums(
    sites: Sequence[LinearSite], dtype: str, shardings: fstore.FactorSums, leading: int | None
) -> fstore.FactorSums:
    """ShapeDtypeStructs of `zero_sums(...)` (nothing allocated)."""
    groups = input_groups(sites)
    lead = () if leading is None else (leading,)
    make = lambda d, sh: jax.ShapeDtypeStruct((*lead, d, d), jnp.dtype(dtype), sharding=sh)  # noqa: E731
    return fstore.FactorSums(
        {g: make(s.d_in, shardings.A[g]) for g, s in groups.items()},
        {s.id: make(s.d_out, shardings.G[s.id]) for s in sites},
    )


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
    step = _engine_step(
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
        f"batch_size {config.batch_size} does not fit: even reduce='step' needs {fits['step']} "
        f"per device of {gib(budget)} ({source}). Give a smaller --batch-size, fewer layers, or "
        f"more devices."
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


def run_identity(
    model, sites, windows: Windows | LabelledExamples, config: CollectConfig, engine: str
) -> dict[str, Any]:
    """What must match for a run directory to be continued."""
    return {
        "format": fstore.FORMAT,
        "engine": engine,
        "model": {
            "fingerprint": model.fingerprint(),
            "source": getattr(model, "source", ""),
            "config": model.config.to_dict(),
        },
        "corpus": windows.describe(),
        "mode": config.mode,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "accumulate_dtype": config.accumulate_dtype,
        "sites": [fstore.site_to_dict(s) for s in sites],
    }


def _check_resumable(existing: dict[str, Any], identity: dict[str, Any], directory: str) -> None:
    diffs = [k for k in identity if existing.get(k) != identity[k]]
    if diffs:
        detail = "; ".join(
            f"{k}: existing {_short(existing.get(k))} vs now {_short(identity[k])}" for k in diffs
        )
        raise ValueError(
            f"{directory} already holds a factor run that differs in {diffs} ({detail}). "
            f"Continuing would mix incompatible statistics: use a new `out_dir`, or delete "
            f"this one to start over."
        )


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) < 80 else s[:77] + "..."


def collect(
    model: CurvatureModel,
    windows: Windows | LabelledExamples,
    sites: Sequence[LinearSite],
    out_dir: str,
    config: CollectConfig = CollectConfig(),
    *,
    engine: str = "native",
    progress: bool = True,
    stop_after: int | None = None,
    before_write: Callable[[], None] | None = None,
) -> fstore.FactorRun:
    """Collect K-FAC factors for `sites` over `windows` into the factor run at `out_dir`.

    `windows` is token `Windows` for a language model or `LabelledExamples` (images + labels) for a
    classifier; positions are weighted by the model's `loss_targets` (CLS only for a ViT). Token
    ids must lie in [0, vocab_size) and windows fit the model's positions (checked first).

    `out_dir` must be new, empty or a factor run (`kfac_mem.rundir`); it is locked for the whole
    call. Resumes an interrupted run with the same identity (model weights, corpus, mode, seed,
    batch size, sites); refuses to continue a different one, or a run whose metadata.json is gone.
    `before_write` is called once every check has passed, before the first write of the run (the
    CLI writes config.yaml there). `stop_after` (batches) ends early without marking the run
    complete (used to test interruption).

    The reduce mode (`config.reduce`, "auto" by default) is chosen by `choose_reduce` from the
    compiled step's memory; the choice and its reason are logged and written to the run's
    metadata under "reduce". Every window counts: the last batch is padded with zero-weight rows.

    Returns the finished run as `kfac_mem.load_factors(out_dir)` would.
    """
    if isinstance(windows, Windows):
        cfg = getattr(model, "config", None)
        check_token_ids(windows.tokens, getattr(cfg, "vocab_size", None), "`windows`")
        check_window_length(
            windows.seq_len, getattr(cfg, "max_position_embeddings", None), "`windows`"
        )
    inputs = {"model": getattr(model, "source", None)}
    inputs.update({f"windows ({p})": p for p in windows.sources})
    with claim(out_dir, "factors", inputs=inputs):
        return _collect(
            model, windows, sites, out_dir, config, engine, progress, stop_after, before_write
        )


def _collect(model, windows, sites, out_dir, config, engine, progress, stop_after, before_write):
    mesh, rules = model.mesh, model.rules
    if config.accumulate_dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "float64 accumulation needs 64-bit JAX: set JAX_ENABLE_X64=1 or "
            "jax.config.update('jax_enable_x64', True) before loading the model."
        )
    if mesh is None:
        raise ValueError("`model` must be placed on a mesh (load it with mesh=..., rules=...).")
    n_data = int(np.prod([mesh.shape[a] for a in data_axes(mesh, rules)])) or 1
    if len(windows) == 0:
        raise ValueError("The corpus has no windows; give more data.")
    n_windows = len(windows)
    n_batches = -(-n_windows // config.batch_size)  # the last one padded with zero-weight rows
    rows = step_batch_size(config.batch_size, n_data)
    if engine == "kfac-jax" and (rows != config.batch_size or n_windows % config.batch_size):
        raise ValueError(
            f"--engine kfac-jax cannot mask padding rows: give a --batch-size that divides the "
            f"{n_windows} windows and is a multiple of the {n_data} data shards, or use "
            f"--engine native."
        )
    identity = run_identity(model, sites, windows, config, engine)
    manifest = run_manifest({"labels": config.seed})
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, fstore.METADATA)
    state = os.path.join(out_dir, "state")
    has_state = os.path.isdir(state) and bool(os.listdir(state))
    if os.path.isfile(meta_path):
        existing = fstore.read_metadata(out_dir)
        if has_state or (existing.get("progress") or {}).get("steps"):
            _check_resumable(existing, identity, out_dir)
        # else: nothing was accumulated (refused or interrupted at once): start afresh.
    elif has_state:
        raise CorruptArtifactError(
            f"`out_dir` {out_dir} holds factor checkpoints (state/) but no {fstore.METADATA}, so "
            f"what they were collected on cannot be checked and they cannot be resumed. Delete "
            f"the directory to start over, or choose another `out_dir`."
        )
    if before_write is not None:
        before_write()

    shardings = factor_shardings(sites, mesh, rules)
    batch_sh = batch_shardings(windows, rows, mesh, rules)
    per_item = windows.positions_per_item
    manager = fstore.checkpoint_manager(out_dir)
    info = {"n_tokens": 0, "windows_done": 0, "steps": 0, "complete": False, "loss_sum": 0.0}
    if manager.latest_step() is not None:
        totals, info = fstore.restore_state(
            manager, target=zero_sums(sites, config.accumulate_dtype, shardings)
        )
        if info.get("complete"):
            manager.close()
            return fstore.FactorRun(out_dir)
    else:
        totals = zero_sums(sites, config.accumulate_dtype, shardings)

    def batch_at(step):
        start = step * config.batch_size
        n_valid = min(config.batch_size, n_windows - start)
        return global_batch(windows, start, rows, batch_sh, n_valid), n_valid

    try:
        choice = choose_reduce(model, sites, config, batch_at(0)[0], n_data, engine)
    except ValueError:
        manager.close()
        raise
    reduce_meta = choice.describe()
    log.info("collect: reduce=%s (%s)", choice.mode, choice.reason)
    write_json_atomic(
        meta_path, {**identity, "progress": info, "reduce": reduce_meta, "manifest": manifest}
    )

    step_fn = choice.compiled
    if choice.mode == "checkpoint":
        partial_sh = partial_shardings(sites, mesh, rules)
        partials = zero_sums(sites, config.accumulate_dtype, partial_sh, leading=n_data)
        fold = make_fold(shardings, partial_sh)
    else:
        partials, fold = None, None
    base_key = jax.random.key(config.seed)
    start_step = int(info["steps"])
    last = n_batches if stop_after is None else min(n_batches, start_step + stop_after)
    bar = _progress_bar(progress, n_windows * per_item, int(info["windows_done"]) * per_item)
    pending: list[tuple[int, int, dict]] = []  # steps dispatched but not yet checked

    def settle():
        """Check every dispatched step's finiteness and fold its counts into `info`."""
        nonlocal info
        for step, n_valid, stats in pending:
            stats = jax.device_get(stats)
            bad = sorted(name for name, ok in stats["finite"].items() if not ok)
            first = step * config.batch_size
            if bad:
                manager.close()
                raise NonFiniteError(
                    f"Non-finite activations or gradients at step {step} (windows "
                    f"{first}..{first + n_valid - 1}) in {bad}. "
                    f"Nothing from this step was saved; {out_dir} still holds the run up to step "
                    f"{info['steps']}. Check the model's dtype (try --dtype float32) and the data."
                )
            info = {
                "n_tokens": info["n_tokens"] + int(stats["count"]),
                "windows_done": first + n_valid,
                "steps": step + 1,
                "complete": False,
                "loss_sum": info["loss_sum"] + float(stats["loss"]),
            }
            if bar is not None:
                bar.update(n_valid * per_item)
                bar.set_postfix(loss=f"{info['loss_sum'] / max(info['n_tokens'], 1):.3f}")
        pending.clear()

    def checkpoint(step):
        nonlocal totals, partials
        settle()
        if partials is not None:
            totals, partials = fold(totals, partials)
        fstore.save_state(manager, step, totals, info)
        write_json_atomic(
            meta_path,
            {**identity, "progress": info, "reduce": reduce_meta, "manifest": manifest},
        )

    for step in range(start_step, last):
        batch, n_valid = batch_at(step)
        key = jax.random.fold_in(base_key, step)
        valid = np.int32(n_valid)
        if partials is None:
            totals, stats = step_fn(totals, model.params, batch, key, valid)
        else:
            partials, stats = step_fn(partials, model.params, batch, key, valid)
        if len(pending) >= 1:
            settle()  # the previous step; this one keeps the device busy meanwhile
        pending.append((step, n_valid, stats))
        if (step + 1) % config.save_every == 0 and step + 1 < last:
            checkpoint(step + 1)
    settle()
    if bar is not None:
        bar.close()
    info["complete"] = last == n_batches
    checkpoint(last)
    manager.close()
    if jax.process_count() > 1:  # every process reads the metadata that process 0 just wrote
        multihost_utils.sync_global_devices(f"kfac_mem.collect:{out_dir}")
    return fstore.FactorRun(out_dir)


def _engine_step(engine, model, sites, config, shardings, n_data, record=None):
    if engine == "native":
        return make_step(model, sites, config, shardings, n_data, record=record)
    if engine == "kfac-jax":
        from kfac_mem.kfac_jax_engine import make_kfac_jax_step

        return make_kfac_jax_step(model, sites, config, shardings, n_data)
    raise ValueError(f"--engine must be 'native' or 'kfac-jax', got {engine!r}.")


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="tok", unit_scale=True, desc="collect", smoothing=0.1
    )
