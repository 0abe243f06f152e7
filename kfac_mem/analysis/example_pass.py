"""The per-example pass: every example of every set through the sharded step, batch by batch.

Per batch, the step's per-example outputs are written to the zarr store (rows of that batch only)
and folded into running per-set summaries (direction counts, activation strength sums, the
scalar distributions). Per set, the device accumulator Σ_n Γ̃_n² gives the pooled sharpness and,
for the EK-FAC sets, is added into the EK-FAC sums. Labels are drawn with the key
fold_in(fold_in(key(seed), set index), batch index), independent of the device count.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kfac_mem.analysis.options import AnalyzeOptions
from kfac_mem.analysis.sets import ExampleSet
from kfac_mem.analysis.step import (
    StepConfig,
    accumulator_shardings,
    make_step,
    place_replicated,
    place_rows,
    to_host,
    zero_accumulators,
)
from kfac_mem.analysis.store import ArrayWriter, create_site_arrays
from kfac_mem.analysis.summary import DirectionCounts, StrengthSums, derived, set_summary
from kfac_mem.sharding import data_axes, logical_to_sharding
from models import axes
from models.sites import LinearSite


@dataclasses.dataclass
class PassResult:
    """What the pass leaves for the report.

    Attributes:
      per_example: layer id -> set -> `summary.set_summary` dict.
      strengths: layer id -> set -> `StrengthSums.summary()` (mean band norms per basis).
      ekfac_sums: layer id -> Σ_n Γ̃_n² over the EK-FAC sets (device arrays), or None.
      ekfac_positions: Σ_n T_n over the EK-FAC sets.
      row_chunks: layer id -> rows of Γ̃ per block.
      bases: activation bases measured.
    """

    per_example: dict[str, dict[str, Any]]
    strengths: dict[str, dict[str, Any]]
    ekfac_sums: dict[str, jax.Array] | None
    ekfac_positions: float
    row_chunks: dict[str, int]
    bases: list[str]


def data_parallel(model) -> int:
    """Number of shards the batch is split over on the model's mesh."""
    return int(np.prod([model.mesh.shape[a] for a in data_axes(model.mesh, model.rules)])) or 1


def row_chunk(site: LinearSite, options: AnalyzeOptions, local_batch: int) -> int:
    """Rows of Γ̃ per block: `options.row_chunk`, or as many as fit `options.chunk_bytes`."""
    if options.row_chunk is not None:
        return max(1, min(int(options.row_chunk), site.d_out))
    per_row = max(1, local_batch) * site.d_in * 4 * 3  # Γ̃ block, its square, the masked copy
    return max(1, min(site.d_out, options.chunk_bytes // per_row))


@functools.partial(jax.jit, static_argnums=1)
def _pooled(acc: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """(Σ of a set's summed profile Σ_n Γ̃_n², Σ of its k largest entries)."""
    return acc.sum(), jax.lax.top_k(acc.reshape(-1), k)[0].sum()


class _SetAccumulator:
    """Running per-layer summaries of one set."""

    def __init__(self, site_ids, k_by_site, bases, n_bands):
        self.counts = {sid: DirectionCounts(k_by_site[sid]) for sid in site_ids}
        self.sums = {sid: StrengthSums(bases, n_bands) for sid in site_ids}
        self.scalars = {
            sid: {
                "total": [],
                "sharpness": [],
                "pr": [],
                "share": [],
                "band": [],
                "top": [],
                "positions": [],
                **{f"act_{b}": [] for b in bases},
            }
            for sid in site_ids
        }
        self.positions = 0.0

    def add(self, writer: ArrayWriter, name: str, start: int, out: dict[str, Any], m: int):
        """Fold in the first `m` (real) rows of one batch's host outputs and write them."""
        n_pos = out["n_positions"][:m]
        self.positions += float(n_pos.sum())
        writer.write(f"{name}/n_positions", start, n_pos)
        for sid, o in out["sites"].items():
            o = jax.tree_util.tree_map(lambda x: x[:m], o)
            sharp, pr, share = derived(o["total"], o["fourth"], o["top_values"], o["band"])
            self.counts[sid].add(o["top_index"][o["total"] > 0])
            self.sums[sid].add(o["act"], n_pos)
            prefix = f"{name}/{sid}"
            for key, value in (
                ("total", o["total"]),
                ("sharpness", sharp),
                ("participation_ratio", pr),
                ("band_share", share),
                ("top_values", o["top_values"]),
                ("top_index", o["top_index"]),
            ):
                writer.write(f"{prefix}/{key}", start, value)
            for basis, (s1, _) in o["act"].items():
                writer.write(f"{prefix}/act_{basis}", start, s1 / np.maximum(n_pos, 1)[:, None])
            sc = self.scalars[sid]
            for key, value in (
                ("total", o["total"]),
                ("sharpness", sharp),
                ("pr", pr),
                ("share", share),
                ("band", o["band"]),
                ("top", np.asarray(o["top_values"])[:, 0]),
                ("positions", np.asarray(n_pos, np.float64)),
                *(
                    (f"act_{b}", np.asarray(s1, np.float64) / np.maximum(n_pos, 1)[:, None])
                    for b, (s1, _) in o["act"].items()
                ),
            ):
                sc[key].append(value)


def run_example_pass(
    model,
    sites: Sequence[LinearSite],
    example_sets: Mapping[str, ExampleSet],
    bases: Mapping[str, Mapping[str, np.ndarray]],
    options: AnalyzeOptions,
    writer: ArrayWriter,
    ekfac_sets: Sequence[str],
    log: Callable[[str], None],
) -> PassResult:
    """Run every set through the step (see module docstring)."""
    mesh, rules = model.mesh, model.rules
    bsz = options.batch_size
    n_bands = len(options.bands)
    basis_names = ["kfac", "kfac_mu"] + (["svd"] if options.svd else [])
    local = bsz // data_parallel(model)
    chunks = {s.id: row_chunk(s, options, local) for s in sites}
    config = StepConfig(
        options.mode, options.top_k, options.vocab_chunk, tuple(chunks.items()), options.svd
    )
    acc_sh = accumulator_shardings(sites, mesh, rules)
    step = make_step(model, sites, config, acc_sh)
    bases_dev = place_replicated(dict(bases), mesh)
    add = jax.jit(lambda x, y: jax.tree_util.tree_map(jnp.add, x, y), donate_argnums=0)
    ekfac_sums = zero_accumulators(sites, acc_sh) if options.ekfac and ekfac_sets else None
    ekfac_positions = 0.0
    k_by_site = {s.id: min(options.top_k, s.d_out * s.d_in) for s in sites}
    per_example: dict[str, dict[str, Any]] = {s.id: {} for s in sites}
    strengths: dict[str, dict[str, Any]] = {s.id: {} for s in sites}
    base_key = jax.random.key(options.seed)
    bar = _progress(options.progress, sum(-(-len(s) // bsz) for s in example_sets.values()))
    for si, (name, s) in enumerate(example_sets.items()):
        n = len(s)
        writer.create(f"{name}/n_positions", (n,), np.float32, bsz, "loss positions per example")
        for site in sites:
            create_site_arrays(
                writer, name, site.id, n, k_by_site[site.id], n_bands, bsz, basis_names
            )
        acc = zero_accumulators(sites, acc_sh)
        running = _SetAccumulator(per_example, k_by_site, basis_names, n_bands)
        batch_sh = logical_to_sharding((axes.ACT_BATCH, None), (bsz, s.seq_len), mesh, rules)
        for bi, start in enumerate(range(0, n, bsz)):
            tokens = place_rows(s.tokens, start, bsz, batch_sh, np.int32)
            pos = place_rows(s.positions, start, bsz, batch_sh, np.float32)
            key = jax.random.fold_in(jax.random.fold_in(base_key, si), bi)
            acc, out = step(model.params, bases_dev, acc, tokens, pos, key)
            running.add(writer, name, start, to_host(out), min(bsz, n - start))
            if bar is not None:
                bar.update(1)
        for sid in per_example:
            pooled_total, pooled_top = to_host(_pooled(acc[sid], k_by_site[sid]))
            per_example[sid][name] = set_summary(
                running.scalars[sid],
                running.counts[sid],
                float(pooled_total),
                float(pooled_top),
                n_bands,
            )
            strengths[sid][name] = running.sums[sid].summary()
        if ekfac_sums is not None and name in ekfac_sets:
            ekfac_sums = add(ekfac_sums, acc)
            ekfac_positions += running.positions
        del acc
        log(f"analyzed set {name}: {n} examples, {running.positions:.0f} loss positions")
    if bar is not None:
        bar.close()
    return PassResult(per_example, strengths, ekfac_sums, ekfac_positions, chunks, basis_names)


def _progress(enabled: bool, total: int):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="batch", desc="analyze")
