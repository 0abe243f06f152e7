"""`collect`: the resumable pass over a data source that writes a factor run (docs/design.md §5.2).

The run directory is claimed and locked for the whole call (`kfac_mem.rundir`); a rerun with the
same identity (model weights, corpus, mode, seed, batch size, sites) resumes from the latest
checkpoint, a different one is refused. The budget (how many windows) is not part of the identity:
a rerun with more windows of the same corpus extends a finished run from where it stopped, since
windows are a prefix-stable stream (`kfac_mem.data`). `time_budget_s` stops a call at a step
boundary with a checkpoint; a rerun continues.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

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
from kfac_mem.data import LabelledExamples, Windows, corpus_identity
from kfac_mem.errors import CorruptArtifactError, InputError, NonFiniteError
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
    """What must match for a run directory to be continued or extended: everything but the
    budget (`n_windows`) and the corpus's location (`kfac_mem.data.BUDGET_KEYS`)."""
    return {
        "format": fstore.FORMAT,
        "engine": engine,
        "model": {
            "fingerprint": model.fingerprint(),
            "source": getattr(model, "source", ""),
            "config": model.config.to_dict(),
        },
        "corpus": corpus_identity(windows.describe()),
        "mode": config.mode,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "accumulate_dtype": config.accumulate_dtype,
        "sites": [fstore.site_to_dict(s) for s in sites],
    }


def _comparable(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity as compared on resume: the corpus without its budget and location."""
    return {**identity, "corpus": corpus_identity(identity.get("corpus"))}


def _check_resumable(existing: dict[str, Any], identity: dict[str, Any], directory: str) -> None:
    if existing.get("engine") == "merge":
        raise InputError(
            f"`out_dir` {directory} holds a merged factor run (`kfac-mem merge`), which no "
            f"collection continues; collect into a new `out_dir` and merge the runs again."
        )
    old, new = _comparable(existing), _comparable(identity)
    diffs = [k for k in new if old.get(k) != new[k]]
    if diffs:
        detail = "; ".join(
            f"{k}: existing {_short(old.get(k))} vs now {_short(new[k])}" for k in diffs
        )
        was, now = existing.get("corpus") or {}, new.get("corpus") or {}
        hint = ""
        if "corpus" in diffs and "join" in now and "join" not in was:
            hint = (
                " (this run was collected before text corpora were fingerprinted by their "
                "source and joining rule, so it cannot be continued)"
            )
        raise ValueError(
            f"{directory} already holds a factor run that differs in {diffs} ({detail}){hint}. "
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
    time_budget_s: float | None = None,
    stop_after: int | None = None,
    before_write: Callable[[], None] | None = None,
) -> fstore.FactorRun:
    """Collect K-FAC factors for `sites` over `windows` into the factor run at `out_dir`.

    `windows` is token `Windows` [n, L] for a language model or `LabelledExamples` (images +
    labels) for a classifier; positions are weighted by the model's `loss_targets` (CLS only for a
    ViT). Token ids must lie in [0, vocab_size) and windows fit the model's positions (checked
    first).

    `out_dir` must be new, empty or a factor run (`kfac_mem.rundir`); it is locked for the whole
    call. Resumes an interrupted run with the same identity (model weights, corpus, mode, seed,
    batch size, sites; docs/design.md §5.2); refuses to continue a different one, a merged run, or
    a run whose metadata.json is gone. The number of windows is a budget, not part of the
    identity: with more windows of the same corpus (the same fingerprint, e.g. a larger
    `max_tokens` for `load_windows`) a finished run is extended from where it stopped; fewer
    windows than the run already holds are refused. Windows [0, windows_done) are never read
    again, and batches continue from window windows_done.

    `time_budget_s` (seconds from the call's start, compilation included) ends the pass at the
    first step boundary after the budget, with a checkpoint; the run stays incomplete
    (`progress.stopped` = "time_budget", `progress.windows_done` of `corpus.n_windows`) and a
    rerun continues it. At least one step runs per call. `before_write` is called once every check
    has passed, before the first write of the run (the CLI writes config.yaml there). `stop_after`
    (batches) ends early the same way (used to test interruption).

    The reduce mode (`config.reduce`, "auto" by default) is chosen by `choose_reduce` from the
    compiled step's memory; the choice and its reason are logged and written to the run's
    metadata under "reduce". Every window counts: the last batch is padded with zero-weight rows.

    Returns the run as `kfac_mem.load_factors(out_dir)` would (`.complete` says whether every
    window was collected).
    """
    t0 = time.monotonic()
    if time_budget_s is not None and not time_budget_s > 0:
        raise InputError(f"`time_budget_s` must be > 0 seconds, got {time_budget_s}.")
    if stop_after is not None and stop_after < 1:
        raise InputError(f"`stop_after` must be >= 1 batches, got {stop_after}.")
    if isinstance(windows, Windows):
        cfg = getattr(model, "config", None)
        check_token_ids(windows.tokens, getattr(cfg, "vocab_size", None), "`windows`")
        check_window_length(
            windows.seq_len, getattr(cfg, "max_position_embeddings", None), "`windows`"
        )
    inputs = {"model": getattr(model, "source", None)}
    inputs.update({f"windows ({p})": p for p in windows.sources})
    deadline = None if time_budget_s is None else t0 + float(time_budget_s)
    with claim(out_dir, "factors", inputs=inputs):
        return _collect(
            model, windows, sites, out_dir, config, engine, progress, deadline, stop_after,
            before_write,
        )  # fmt: skip


def _collect(
    model, windows, sites, out_dir, config, engine, progress, deadline, stop_after, before_write
):
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
    rows = step_batch_size(config.batch_size, n_data)
    if engine == "kfac-jax" and (rows != config.batch_size or n_windows % config.batch_size):
        raise ValueError(
            f"`engine` 'kfac-jax' cannot mask padding rows: give a `batch_size` that divides the "
            f"{n_windows} windows and is a multiple of the {n_data} data shards, or use "
            f"`engine` 'native'."
        )
    identity = run_identity(model, sites, windows, config, engine)
    corpus = windows.describe()  # recorded in full: the budget and the sources too
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

    shardings = factor_shardings(sites, mesh, rules)
    manager = fstore.checkpoint_manager(out_dir)
    info = {"n_tokens": 0, "windows_done": 0, "steps": 0, "complete": False, "loss_sum": 0.0}
    if manager.latest_step() is not None:
        totals, info = fstore.restore_state(
            manager, target=zero_sums(sites, config.accumulate_dtype, shardings)
        )
        done = int(info["windows_done"])
        if done > n_windows:
            manager.close()
            how = (
                f" (`max_tokens` >= {done * windows.seq_len})"
                if isinstance(windows, Windows)
                else ""
            )
            raise InputError(
                f"`out_dir` {out_dir} already holds {done} windows ({info['n_tokens']} positions) "
                f"of this corpus, more than the {n_windows} windows `windows` holds now: a factor "
                f"run never shrinks. Give at least {done} windows{how} to extend it, or choose "
                f"another `out_dir`."
            )
        if done == n_windows and info.get("complete"):
            manager.close()
            log.info("collect: %s already holds all %d windows", out_dir, n_windows)
            return fstore.FactorRun(out_dir)
    else:
        totals = zero_sums(sites, config.accumulate_dtype, shardings)
    if before_write is not None:
        before_write()

    batch_sh = batch_shardings(windows, rows, mesh, rules)
    per_item = windows.positions_per_item

    def batch_at(start):
        n_valid = min(config.batch_size, n_windows - start)
        return global_batch(windows, start, rows, batch_sh, n_valid), n_valid

    try:
        choice = choose_reduce(model, sites, config, batch_at(0)[0], n_data, engine)
    except ValueError:
        manager.close()
        raise
    reduce_meta = choice.describe()
    log.info("collect: reduce=%s (%s)", choice.mode, choice.reason)
    stopped: str | None = None

    def metadata() -> dict[str, Any]:
        return {
            **identity,
            "corpus": corpus,
            "progress": {**info, "stopped": stopped},
            "reduce": reduce_meta,
            "manifest": manifest,
        }

    write_json_atomic(meta_path, metadata())

    step_fn = choice.compiled
    if choice.mode == "checkpoint":
        partial_sh = partial_shardings(sites, mesh, rules)
        partials = zero_sums(sites, config.accumulate_dtype, partial_sh, leading=n_data)
        fold = make_fold(shardings, partial_sh)
    else:
        partials, fold = None, None
    base_key = jax.random.key(config.seed)
    bar = _progress_bar(progress, n_windows * per_item, int(info["windows_done"]) * per_item)
    pending: list[tuple[int, int, int, dict]] = []  # steps dispatched but not yet checked

    def settle():
        """Check every dispatched step's finiteness and fold its counts into `info`."""
        nonlocal info
        for step, start, n_valid, stats in pending:
            stats = jax.device_get(stats)
            bad = sorted(name for name, ok in stats["finite"].items() if not ok)
            if bad:
                manager.close()
                raise NonFiniteError(
                    f"Non-finite activations or gradients at step {step} (windows "
                    f"{start}..{start + n_valid - 1}) in {bad}. "
                    f"Nothing from this step was saved; {out_dir} still holds the run up to step "
                    f"{info['steps']}. Check the model's dtype (try `dtype` float32) and the data."
                )
            info = {
                "n_tokens": info["n_tokens"] + int(stats["count"]),
                "windows_done": start + n_valid,
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
        latest = manager.latest_step()
        fstore.save_state(manager, step if latest is None else max(step, latest + 1), totals, info)
        write_json_atomic(meta_path, metadata())

    step = int(info["steps"])
    start = int(info["windows_done"])
    ran = 0
    while start < n_windows:
        batch, n_valid = batch_at(start)
        key = jax.random.fold_in(base_key, step)
        valid = np.int32(n_valid)
        if partials is None:
            totals, stats = step_fn(totals, model.params, batch, key, valid)
        else:
            partials, stats = step_fn(partials, model.params, batch, key, valid)
        if len(pending) >= 1:
            settle()  # the previous step; this one keeps the device busy meanwhile
        pending.append((step, start, n_valid, stats))
        step, start, ran = step + 1, start + n_valid, ran + 1
        if start >= n_windows:
            break
        if stop_after is not None and ran >= stop_after:
            stopped = "stop_after"
            break
        if deadline is not None and _past(deadline):
            stopped = "time_budget"
            break
        if step % config.save_every == 0:
            checkpoint(step)
    settle()
    if bar is not None:
        bar.close()
    info["complete"] = info["windows_done"] == n_windows
    if stopped == "time_budget":
        log.info(
            "collect: time budget reached after %d of %d windows; rerun to continue",
            info["windows_done"],
            n_windows,
        )
    checkpoint(step)
    manager.close()
    after_primary_wrote(f"kfac_mem.collection.run:{out_dir}")  # the others read its metadata
    return fstore.FactorRun(out_dir)


def _past(deadline: float) -> bool:
    """Whether the time budget is spent, decided by process 0 for every process (so all stop at
    the same step)."""
    now = time.monotonic() >= deadline
    if jax.process_count() == 1:
        return now
    return bool(multihost_utils.broadcast_one_to_all(np.int32(now)))


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="tok", unit_scale=True, desc="collect", smoothing=0.1
    )
