"""`merge_factor_runs`: one factor run from several, by adding their exact sums and token counts.

A factor run stores Σ a aᵀ, Σ g gᵀ and the exact position count (docs/design.md §2.4), so runs over
the same model and sites merge exactly: the merged sums are the sums of the runs' sums (added in
float64, stored in the runs' accumulation dtype) and the counts add as integers. What a merge is
for: disjoint corpora or shards of one corpus, and sampled-label runs over the same windows with
different seeds (more label draws per position). What it refuses (docs/design.md §5.2):

  * runs that differ in the model's fingerprint, the sites, the label mode or the accumulation
    dtype (the error names the metadata key);
  * incomplete runs, unless `allow_incomplete`;
  * two runs that cover overlapping windows of one corpus stream with the same labels (empirical
    mode, or sampled with the same seed): those windows would be counted twice.

The merged run is a factor run (rundir kind "factors", engine "merge") that `load_factors`,
`decompose` and `edit` read like any other; its metadata lists every source run (`merged_from`,
flattened when a source is itself a merge). No collection continues it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kfac_mem.atomic import write_json_atomic
from kfac_mem.collection import store as fstore
from kfac_mem.errors import InputError, OutputDirError
from kfac_mem.manifest import run_manifest
from kfac_mem.rundir import claim

__all__ = ["MERGE_ENGINE", "merge_factor_runs", "source_leaves"]

MERGE_ENGINE = "merge"


def source_leaves(run: fstore.FactorRun) -> list[dict[str, Any]]:
    """The collected runs a factor run is made of: itself, or the sources a merge recorded.

    Each leaf is {"path", "corpus" (the run's full corpus description), "seed", "engine",
    "windows": [first, end) (the window range of its corpus it summed), "n_tokens", "complete"}.
    """
    meta = run.metadata
    if meta.get("engine") == MERGE_ENGINE:
        return [dict(leaf) for leaf in meta.get("merged_from") or []]
    return [
        {
            "path": run.directory,
            "corpus": meta.get("corpus"),
            "seed": meta.get("seed"),
            "engine": meta.get("engine"),
            "windows": [0, int(run.info.get("windows_done") or 0)],
            "n_tokens": run.n_tokens,
            "complete": run.complete,
        }
    ]


# Metadata keys (shown in messages) whose values must agree, and how to read each.
_MUST_MATCH: dict[str, Callable[[dict[str, Any]], Any]] = {
    "model.fingerprint": lambda m: (m.get("model") or {}).get("fingerprint"),
    "sites": lambda m: sorted((m.get("sites") or []), key=lambda s: s["id"]),
    "mode": lambda m: m.get("mode"),
    "accumulate_dtype": lambda m: m.get("accumulate_dtype"),
}


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) < 80 else s[:77] + "..."


def _span(leaf: dict[str, Any]) -> tuple[str | None, int, int]:
    """(stream key, first, end) of a leaf in the units of its stream: tokens for text corpora
    (`corpus.stream` is the token stream whatever the window length), windows otherwise."""
    corpus = leaf.get("corpus") or {}
    first, end = (int(x) for x in leaf.get("windows") or (0, 0))
    if corpus.get("stream"):
        unit = int(corpus.get("seq_len") or 1)
        return f"stream:{corpus['stream']}", first * unit, end * unit
    key = corpus.get("fingerprint")
    return (None if key is None else f"fingerprint:{key}"), first, end


def _check_overlap(leaves: list[tuple[int, dict[str, Any]]], mode: str) -> None:
    """Refuse two leaves of different inputs over overlapping windows of one stream with the same
    labels (empirical mode, or the same seed)."""
    for a in range(len(leaves)):
        for b in range(a + 1, len(leaves)):
            (ia, la), (ib, lb) = leaves[a], leaves[b]
            if ia == ib:
                continue
            (ka, sa, ea), (kb, sb, eb) = _span(la), _span(lb)
            if ka is None or ka != kb or not (sa < eb and sb < ea):
                continue
            if mode == "sampled" and la.get("seed") != lb.get("seed"):
                continue  # independent label draws on the same windows: a valid larger sample
            labels = "gold labels" if mode != "sampled" else f"the same seed {la.get('seed')}"
            fp = (la.get("corpus") or {}).get("fingerprint")
            raise InputError(
                f"`paths` {la['path']} and {lb['path']} cover overlapping windows of one corpus "
                f"(fingerprint {fp}: windows {la['windows']} and {lb['windows']}) with {labels}: "
                f"merging would count those windows twice. Merge runs over disjoint corpora or "
                f"shards, or sampled-label runs with different seeds."
            )


def merge_factor_runs(
    paths: Sequence[str],
    out_dir: str,
    *,
    allow_incomplete: bool = False,
    overwrite: bool = False,
    before_write: Callable[[], None] | None = None,
) -> fstore.FactorRun:
    """Merge the factor runs at `paths` into a new factor run at `out_dir` (docs/design.md §5.2).

    Every ΣA [d_in, d_in] and ΣG [d_out, d_out] of the result is the sum of the runs' sums
    (accumulated in float64, stored in their accumulation dtype) and n_tokens the exact sum of
    their counts, so the merged means equal those of one run over all the data within float32
    accumulation error. Host memory: about three times one run's sums.

    Args:
      paths: two or more factor runs (`collect` or earlier merges) of one model (fingerprint),
        with the same sites, label mode and accumulation dtype.
      out_dir: a new or empty directory, or an earlier merge with `overwrite` (never a collected
        run, nor one of `paths`; `kfac_mem.rundir`).
      allow_incomplete: also merge runs whose collection did not finish.
      overwrite: replace an earlier merge at `out_dir`.
      before_write: called once every check has passed, before the first write (the CLI writes
        config.yaml there).

    Raises InputError naming the metadata key two runs differ in, an incomplete run, or two runs
    that would count the same windows twice (same corpus stream, overlapping window ranges, the
    same labels); OutputDirError for an `out_dir` it may not write.
    Returns the merged run as `kfac_mem.load_factors(out_dir)` reads it.
    """
    paths = [os.fspath(p) for p in paths]
    if len(paths) < 2:
        raise InputError(f"`paths` needs at least two factor runs to merge, got {len(paths)}.")
    real = [os.path.realpath(p) for p in paths]
    dup = next((p for i, p in enumerate(real) if p in real[:i]), None)
    if dup is not None:
        raise InputError(f"`paths` lists {dup} twice: its windows would be counted twice.")
    runs = [fstore.FactorRun(p) for p in paths]
    first = runs[0]
    for run in runs[1:]:
        for key, get in _MUST_MATCH.items():
            if get(run.metadata) != get(first.metadata):
                raise InputError(
                    f"`paths` {run.directory} differs from {first.directory} in the metadata key "
                    f'"{key}" ({_short(get(run.metadata))} vs {_short(get(first.metadata))}): '
                    f"only runs of one model over the same sites, label mode and accumulation "
                    f"dtype merge."
                )
    if not allow_incomplete:
        for run in runs:
            if not run.complete:
                done = run.info.get("windows_done")
                total = (run.metadata.get("corpus") or {}).get("n_windows")
                raise InputError(
                    f"`paths` {run.directory} is incomplete ({done} of {total} windows): finish "
                    f"it (rerun its collect command) or pass `allow_incomplete` to merge it as "
                    f"it is."
                )
    mode = first.metadata.get("mode")
    leaves = [(i, leaf) for i, run in enumerate(runs) for leaf in source_leaves(run)]
    _check_overlap(leaves, mode)

    inputs = {f"paths ({p})": p for p in paths}
    with claim(
        out_dir, "factors", inputs=inputs, overwrite=overwrite, replace_needs_overwrite=True
    ):
        meta_path = os.path.join(out_dir, fstore.METADATA)
        if os.path.isfile(meta_path):
            engine = fstore.read_metadata(out_dir).get("engine")
            if engine != MERGE_ENGINE:
                raise OutputDirError(
                    f"`out_dir` {os.path.realpath(out_dir)} holds a collected factor run "
                    f"(engine {engine}); a merge replaces only an earlier merge. Choose another "
                    f"`out_dir`."
                )
        dtype = np.dtype(first.metadata.get("accumulate_dtype") or "float32")
        totals: dict[str, dict[str, np.ndarray]] = {"A": {}, "G": {}}
        for run in runs:  # one run's sums in memory at a time
            sums = run.read_sums()
            for part, table in (("A", sums.A), ("G", sums.G)):
                for key, value in table.items():
                    value = np.asarray(value, np.float64)
                    prev = totals[part].get(key)
                    totals[part][key] = value if prev is None else prev + value
            del sums
        merged = fstore.FactorSums(
            {k: v.astype(dtype) for k, v in totals["A"].items()},
            {k: v.astype(dtype) for k, v in totals["G"].items()},
        )
        info = {
            "n_tokens": sum(run.n_tokens for run in runs),
            "windows_done": sum(int(run.info.get("windows_done") or 0) for run in runs),
            "steps": sum(int(run.info.get("steps") or 0) for run in runs),
            "complete": all(run.complete for run in runs),
            "loss_sum": float(sum(float(run.info.get("loss_sum") or 0.0) for run in runs)),
        }
        seeds = {leaf.get("seed") for _, leaf in leaves}
        flat = [leaf for _, leaf in leaves]
        metadata = {
            "format": fstore.FORMAT,
            "engine": MERGE_ENGINE,
            "model": first.metadata.get("model"),
            "corpus": {
                "kind": "merged",
                "sources": [
                    s for leaf in flat for s in (leaf.get("corpus") or {}).get("sources", [])
                ],
                "parts": [leaf.get("corpus") for leaf in flat],
            },
            "mode": mode,
            "seed": seeds.pop() if len(seeds) == 1 else None,
            "batch_size": None,
            "accumulate_dtype": str(dtype),
            "sites": first.metadata.get("sites"),
            "merged_from": flat,
            "inputs": [
                {
                    "path": run.directory,
                    "engine": run.metadata.get("engine"),
                    "n_tokens": run.n_tokens,
                    "complete": run.complete,
                }
                for run in runs
            ],
            "progress": {**info, "stopped": None},
            "manifest": run_manifest(),
        }
        if before_write is not None:
            before_write()
        # metadata.json is written last here: without it the directory is refused, never read.
        if os.path.isfile(meta_path):
            os.remove(meta_path)
        shutil.rmtree(os.path.join(out_dir, "state"), ignore_errors=True)
        with fstore.checkpoint_manager(out_dir) as manager:
            fstore.save_state(manager, 0, merged, info)
        write_json_atomic(meta_path, metadata)
    return fstore.FactorRun(out_dir)
