"""`collect`: the resumable pass over a data source that writes a factor run (docs/design.md §5.2).

The run directory is claimed and locked for the whole call (`kfac_mem.rundir`); a rerun with the
same identity (model weights, corpus, mode, seed, batch size, sites) resumes from the latest
checkpoint, a different one is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from kfac_mem.atomic import after_primary_wrote, write_json_atomic
from kfac_mem.collection import store as fstore
from kfac_mem.collection.accumulate import (
    factor_shardings,
    make_fold,
    partial_shardings,
    zero_sums,
)
from kfac_mem.collection.batches import batch_shardings, global_batch, step_batch_size
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.reduce import choose_reduce
from kfac_mem.data import LabelledExamples, Windows
from kfac_mem.errors import CorruptArtifactError, NonFiniteError
from kfac_mem.manifest import run_manifest
from kfac_mem.protocol import CurvatureModel
from kfac_mem.rundir import claim
from kfac_mem.sharding import data_axes
from kfac_mem.validation import check_token_ids, check_window_length
from models.sites import LinearSite

log = logging.getLogger(__name__)


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
            f"`engine` 'kfac-jax' cannot mask padding rows: give a `batch_size` that divides the "
            f"{n_windows} windows and is a multiple of the {n_data} data shards, or use "
            f"`engine` 'native'."
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
                    f"{info['steps']}. Check the model's dtype (try `dtype` float32) and the data."
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
    after_primary_wrote(f"kfac_mem.collection.run:{out_dir}")  # the others read its metadata
    return fstore.FactorRun(out_dir)


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="tok", unit_scale=True, desc="collect", smoothing=0.1
    )
