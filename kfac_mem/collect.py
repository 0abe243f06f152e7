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

Distribution: the step runs under `jax.jit` on a Mesh with the batch split over the data axes and
parameters placed by the model's rules. Each accumulating factor is sharded by rows across all
devices (logical axis `factor_rows`), so per-device factor memory is ≈ total / device count; XLA
turns the per-device partial sums into one reduce-scatter per factor per step. Multi-host: every
process builds the global batch from only the rows its own devices hold
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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from kfac_mem import factors as fstore
from kfac_mem.atomic import write_json_atomic
from kfac_mem.capture import inputs_and_output_grads
from kfac_mem.data import LabelledExamples, Windows
from kfac_mem.head_loss import MODES
from kfac_mem.manifest import run_manifest
from kfac_mem.protocol import CurvatureModel
from kfac_mem.selection import input_groups
from kfac_mem.sharding import data_axes, logical_to_sharding
from models import axes
from models.sites import LinearSite

ACCUMULATE_DTYPES = ("float32", "float64")
# "checkpoint": each data shard keeps its own full partial sums [n_data, d, d] (no communication per
#   step); they are reduced into the row-sharded totals only at checkpoints. Fastest; each device
#   holds one full copy of every factor.
# "step": every step reduces straight into the row-sharded totals (per-device factor memory
#   ≈ total / device count). Use it when one full copy of the selected factors does not fit.
REDUCE_MODES = ("checkpoint", "step")


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    mode: str = "sampled"
    seed: int = 0
    batch_size: int = 8
    accumulate_dtype: str = "float32"
    vocab_chunk: int = 8192
    save_every: int = 100  # batches between checkpoints (and always at the end)
    reduce: str = "checkpoint"  # when per-device partial sums are reduced: "checkpoint" | "step"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}.")
        if self.accumulate_dtype not in ACCUMULATE_DTYPES:
            raise ValueError(f"`accumulate_dtype` must be one of {ACCUMULATE_DTYPES}.")
        if self.reduce not in REDUCE_MODES:
            raise ValueError(f"`reduce` must be one of {REDUCE_MODES}, got {self.reduce!r}.")
        if self.batch_size < 1 or self.save_every < 1 or self.vocab_chunk < 1:
            raise ValueError("`batch_size`, `save_every` and `vocab_chunk` must be >= 1.")


class NonFiniteError(FloatingPointError):
    """A non-finite activation or gradient reached the factors (nothing was written for it)."""


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


def make_step(
    model: CurvatureModel,
    sites: Sequence[LinearSite],
    config: CollectConfig,
    shardings: fstore.FactorSums,
    n_data: int = 1,
) -> Callable:
    """The jitted update (sums, params, batch, key) -> (sums, stats), donating `sums`.

    `sums` are the row-sharded totals when `config.reduce == "step"`, else the [n_data, d, d]
    per-shard partials (`n_data` = number of data shards), which need no communication.
    stats: {"loss": summed CE, "count": positions added, "finite": {name: bool}} where names are
    the input groups (A) and the site ids (G).
    """
    groups = input_groups(sites)
    acc = jnp.dtype(config.accumulate_dtype)
    split = None if config.reduce == "step" else n_data

    def step(sums: fstore.FactorSums, params, batch, key):
        inputs, labels, weights = model.loss_targets(batch)
        acts, grads, loss = inputs_and_output_grads(
            model, params, inputs, labels, weights, sites, config.mode, key, config.vocab_chunk
        )
        mask = weights[..., None]
        new_A, new_G, finite = {}, {}, {}
        for group in groups:
            a = acts[group] * mask.astype(acts[group].dtype)
            finite[group] = jnp.all(jnp.isfinite(a))
            new_A[group] = sums.A[group] + _outer(a, acc, split)
        for site in sites:
            g = grads[site.id] * mask.astype(grads[site.id].dtype)
            finite[site.id] = jnp.all(jnp.isfinite(g))
            new_G[site.id] = sums.G[site.id] + _outer(g, acc, split)
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
    windows: np.ndarray, start: int, batch_size: int, sharding, dtype=np.int32
) -> jax.Array:
    """Global [batch_size, ...] batch of windows[start:start+batch_size] (token windows [n, L] or
    any per-item array, e.g. images [n, H, W, C] or labels [n]) in `dtype`; each process reads
    only the rows its addressable devices hold."""
    shape = (batch_size, *windows.shape[1:])

    def rows(index):
        r = index[0]
        lo = start + (r.start or 0)
        hi = start + (batch_size if r.stop is None else r.stop)
        return np.asarray(windows[lo:hi][(slice(None), *index[1:])], dtype)

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
    data: Windows | LabelledExamples, start: int, batch_size: int, shardings: Sequence
) -> Any:
    """The model's batch for items [start, start + batch_size) of `data`, sharded over the mesh
    (integer arrays as int32, the rest as float32)."""
    arrays = [
        batch_array(
            a,
            start,
            batch_size,
            sh,
            np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32,
        )
        for a, sh in zip(data.arrays, shardings, strict=True)
    ]
    return data.as_batch(arrays)


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
            f"Continuing would mix incompatible statistics: use a new --out directory, or delete "
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
) -> fstore.FactorRun:
    """Collect K-FAC factors for `sites` over `windows` into the factor run at `out_dir`.

    `windows` is token `Windows` for a language model or `LabelledExamples` (images + labels) for a
    classifier; positions are weighted by the model's `loss_targets` (CLS only for a ViT).

    Resumes an interrupted run with the same identity (model weights, corpus, mode, seed, batch
    size, sites); refuses to continue a different one. `stop_after` (batches) ends early without
    marking the run complete (used to test interruption).

    Returns the finished run as `kfac_mem.load_factors(out_dir)` would.
    """
    import os

    mesh, rules = model.mesh, model.rules
    if config.accumulate_dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "float64 accumulation needs 64-bit JAX: set JAX_ENABLE_X64=1 or "
            "jax.config.update('jax_enable_x64', True) before loading the model."
        )
    if mesh is None:
        raise ValueError("`model` must be placed on a mesh (load it with mesh=..., rules=...).")
    n_data = int(np.prod([mesh.shape[a] for a in data_axes(mesh, rules)])) or 1
    if config.batch_size % n_data:
        raise ValueError(
            f"--batch-size {config.batch_size} must be a multiple of the {n_data} devices the batch "
            f"is split over (mesh {dict(mesh.shape)})."
        )
    n_batches = len(windows) // config.batch_size
    if n_batches == 0:
        raise ValueError(
            f"The corpus has {len(windows)} windows, fewer than one batch of {config.batch_size}. "
            f"Give more data or a smaller --batch-size."
        )
    dropped = len(windows) - n_batches * config.batch_size
    if config.reduce != "step" and (engine == "kfac-jax" or n_data == 1):
        # kfac-jax yields reduced batch factors; with one data shard there is nothing to defer.
        config = dataclasses.replace(config, reduce="step")
    identity = run_identity(model, sites, windows, config, engine)
    manifest = run_manifest({"labels": config.seed})
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, fstore.METADATA)
    if os.path.isfile(meta_path):
        _check_resumable(fstore.read_metadata(out_dir), identity, out_dir)

    shardings = factor_shardings(sites, mesh, rules)
    batch_sh = batch_shardings(windows, config.batch_size, mesh, rules)
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
    write_json_atomic(meta_path, {**identity, "progress": info, "manifest": manifest})

    if config.reduce == "checkpoint":
        partial_sh = partial_shardings(sites, mesh, rules)
        partials = zero_sums(sites, config.accumulate_dtype, partial_sh, leading=n_data)
        step_fn = _engine_step(engine, model, sites, config, partial_sh, n_data)
        fold = make_fold(shardings, partial_sh)
    else:
        partials, fold = None, None
        step_fn = _engine_step(engine, model, sites, config, shardings, n_data)
    base_key = jax.random.key(config.seed)
    start_step = int(info["steps"])
    last = n_batches if stop_after is None else min(n_batches, start_step + stop_after)
    bar = _progress_bar(
        progress,
        n_batches * config.batch_size * per_item,
        start_step * config.batch_size * per_item,
    )
    pending: list[tuple[int, dict]] = []  # steps dispatched but not yet checked (async dispatch)

    def settle():
        """Check every dispatched step's finiteness and fold its counts into `info`."""
        nonlocal info
        for step, stats in pending:
            stats = jax.device_get(stats)
            bad = sorted(name for name, ok in stats["finite"].items() if not ok)
            if bad:
                manager.close()
                raise NonFiniteError(
                    f"Non-finite activations or gradients at step {step} (windows "
                    f"{step * config.batch_size}..{(step + 1) * config.batch_size - 1}) in {bad}. "
                    f"Nothing from this step was saved; {out_dir} still holds the run up to step "
                    f"{info['steps']}. Check the model's dtype (try --dtype float32) and the data."
                )
            info = {
                "n_tokens": info["n_tokens"] + int(stats["count"]),
                "windows_done": (step + 1) * config.batch_size,
                "steps": step + 1,
                "complete": False,
                "loss_sum": info["loss_sum"] + float(stats["loss"]),
            }
            if bar is not None:
                bar.update(config.batch_size * per_item)
                bar.set_postfix(loss=f"{info['loss_sum'] / info['n_tokens']:.3f}")
        pending.clear()

    def checkpoint(step):
        nonlocal totals, partials
        settle()
        if partials is not None:
            totals, partials = fold(totals, partials)
        fstore.save_state(manager, step, totals, info)
        write_json_atomic(meta_path, {**identity, "progress": info, "manifest": manifest})

    for step in range(start_step, last):
        batch = global_batch(windows, step * config.batch_size, config.batch_size, batch_sh)
        key = jax.random.fold_in(base_key, step)
        if partials is None:
            totals, stats = step_fn(totals, model.params, batch, key)
        else:
            partials, stats = step_fn(partials, model.params, batch, key)
        if len(pending) >= 1:
            settle()  # the previous step; this one keeps the device busy meanwhile
        pending.append((step, stats))
        if (step + 1) % config.save_every == 0 and step + 1 < last:
            checkpoint(step + 1)
    settle()
    if bar is not None:
        bar.close()
    info["complete"] = last == n_batches
    info["dropped_windows"] = dropped
    checkpoint(last)
    manager.close()
    if jax.process_count() > 1:  # every process reads the metadata that process 0 just wrote
        multihost_utils.sync_global_devices(f"kfac_mem.collect:{out_dir}")
    return fstore.FactorRun(out_dir)


def _engine_step(engine, model, sites, config, shardings, n_data):
    if engine == "native":
        return make_step(model, sites, config, shardings, n_data)
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
