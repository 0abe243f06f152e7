"""Each pipeline stage's real jitted step with abstract arguments (nothing allocated, no weights).

A `StageProgram` is what `kfac_mem.aot.compile_cost` compiles: the function the pipeline runs and
`jax.ShapeDtypeStruct` arguments carrying the shardings the pipeline would give them:

  collect    `kfac_mem.collection.accumulate.make_step`: one batch of factor accumulation (sums donated)
  decompose  `kfac_mem.decomposition.eigh` stacked eigh of one same-size factor stack, sharded on `factor_stack`
  edit       `kfac_mem.editing.reconstruct._dense_product`: W' = U_G((U_Gᵀ W U_A) ⊙ M)U_Aᵀ on one
             device (the dense form, an upper bound on the staircase path's FLOPs)
  generate   `models.generate._generate`: prompt prefill + greedy decode with the KV cache
  bsn        `kfac_mem.baselines.bsn._step`: one BalancedSubnet score update
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kfac_mem.sharding import Rules, data_axes, logical_to_sharding
from models.config import DecoderConfig
from models.language_model import LanguageModel, abstract_params
from models.partitioning import tree_shardings
from models.sites import LinearSite

STAGES = ("collect", "decompose", "edit", "generate", "bsn")


@dataclasses.dataclass(frozen=True)
class StageProgram:
    """One compilable program: `fn(*args)`; `tokens` = positions one call processes (0 if none)."""

    name: str
    fn: Callable
    args: tuple[Any, ...]
    tokens: int
    batch_size: int | None
    note: str = ""
    record: dict[str, str] | None = None  # filled when traced: collect's {factor: scheme}

    def describe(self) -> str:
        """`note`, plus how many factors each accumulation scheme took once compiled."""
        if not self.record:
            return self.note
        counts = collections.Counter(self.record.values())
        return self.note + ", " + ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items()))


def _sds(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def abstract_model(config: DecoderConfig, mesh: Mesh, rules: Rules) -> LanguageModel:
    """A `LanguageModel` whose params are ShapeDtypeStructs placed by the rule table."""
    shapes, logical = abstract_params(config)
    shardings = tree_shardings(logical, shapes, mesh, rules)
    params = jax.tree_util.tree_map(
        lambda s, sh: _sds(s.shape, s.dtype, sh),
        shapes,
        shardings,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )
    return LanguageModel(config, params, None, mesh, rules, source="abstract")


def n_data_shards(mesh: Mesh, rules: Rules) -> int:
    return int(np.prod([mesh.shape[a] for a in data_axes(mesh, rules)], dtype=np.int64)) or 1


def _batch_sharding(mesh: Mesh, rules: Rules, batch: int, width: int) -> NamedSharding:
    return logical_to_sharding(("activation_batch", None), (batch, width), mesh, rules)


def _key(mesh: Mesh) -> jax.ShapeDtypeStruct:
    k = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=NamedSharding(mesh, PartitionSpec()))


def _n_valid(mesh: Mesh) -> jax.ShapeDtypeStruct:
    """The step's count of real (unpadded) rows: an int32 scalar, replicated."""
    return jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))


def collect_program(
    model: LanguageModel,
    sites: Sequence[LinearSite],
    batch_size: int,
    seq_len: int,
    mode: str = "sampled",
    reduce: str = "checkpoint",
    accumulate_dtype: str = "float32",
    vocab_chunk: int = 8192,
    scheme: str = "auto",
) -> StageProgram:
    """`kfac_mem.collection.accumulate.make_step` for [batch_size, seq_len] windows, as `collect` builds it
    (`scheme`: the per-site accumulation under reduce="step", `CollectConfig.scheme`)."""
    from kfac_mem.collection.accumulate import factor_shardings, make_step, partial_shardings
    from kfac_mem.collection.config import CollectConfig
    from kfac_mem.collection.sites import input_groups

    mesh, rules = model.mesh, model.rules
    n_data = n_data_shards(mesh, rules)
    if n_data == 1:
        reduce = "step"  # what `collect` does with one data shard
    config = CollectConfig(
        mode=mode,
        batch_size=batch_size,
        accumulate_dtype=accumulate_dtype,
        vocab_chunk=vocab_chunk,
        reduce=reduce,
        scheme=scheme,
    )
    groups = input_groups(sites)
    if reduce == "step":
        sh = factor_shardings(sites, mesh, rules)
        lead: tuple[int, ...] = ()
    else:
        sh = partial_shardings(sites, mesh, rules)
        lead = (n_data,)
    acc = jnp.dtype(accumulate_dtype)
    sums = type(sh)(
        {g: _sds((*lead, s.d_in, s.d_in), acc, sh.A[g]) for g, s in groups.items()},
        {s.id: _sds((*lead, s.d_out, s.d_out), acc, sh.G[s.id]) for s in sites},
    )
    record: dict[str, str] = {}
    step = make_step(model, sites, config, sh, n_data, record=record)
    batch = _sds(
        (batch_size, seq_len), jnp.int32, _batch_sharding(mesh, rules, batch_size, seq_len)
    )
    return StageProgram(
        "collect",
        step,
        (sums, model.params, batch, _key(mesh), _n_valid(mesh)),
        batch_size * seq_len,
        batch_size,
        f"reduce={reduce}, mode={mode}, {len(groups)} A + {len(sites)} G factors",
        record,
    )


def decompose_programs(
    sites: Sequence[LinearSite], mesh: Mesh, rules: Rules, precision: str = "float32"
) -> list[StageProgram]:
    """One stacked eigh per factor size, as `decompose_run` stacks them (each stack padded to the
    shard count), compiled with the pipeline's `factor_stack` shardings."""
    from kfac_mem.collection.sites import input_groups
    from kfac_mem.decomposition import eigh as eigen
    from kfac_mem.decomposition.store import DEFAULT_CHUNK_BYTES, _chunks

    by_dim: dict[int, list[str]] = {}
    for g, s in input_groups(sites).items():
        by_dim.setdefault(s.d_in, []).append(f"A:{g}")
    for s in sites:
        by_dim.setdefault(s.d_out, []).append(f"G:{s.id}")
    shards = eigen.stack_shards(mesh, rules)
    itemsize = jnp.dtype(precision).itemsize
    out, seen = [], set()
    for _name, d, keys in _chunks(by_dim, shards, itemsize, DEFAULT_CHUNK_BYTES):
        k = eigen.padded_size(len(keys), shards)
        if (k, d) in seen:
            continue  # later chunks of the same shape compile to the same program
        seen.add((k, d))
        shape = (k, d, d)
        fn = eigen._eigh_fn(mesh, rules, shape, np.dtype(precision))
        arg = _sds(shape, precision, eigen.stack_sharding(mesh, rules, shape))
        n_chunks = sum(
            1
            for _, dd, kk in _chunks(by_dim, shards, itemsize, DEFAULT_CHUNK_BYTES)
            if dd == d and eigen.padded_size(len(kk), shards) == k
        )
        out.append(
            StageProgram(
                f"decompose d={d}",
                fn,
                (arg,),
                0,
                None,
                f"stack of {k} matrices {d}×{d} ({len(keys)} real), {n_chunks} chunk(s) like it",
            )
        )
    return out


def edit_programs(sites: Sequence[LinearSite], device: jax.Device) -> list[StageProgram]:
    """The dense masked product for each distinct (d_out, d_in) among `sites`, in float32 on one
    device (`masked_product` runs unsharded)."""
    from kfac_mem.editing.reconstruct import _dense_product

    sh = jax.sharding.SingleDeviceSharding(device)
    out = []
    for m, n in dict.fromkeys((s.d_out, s.d_in) for s in sites):
        args = (
            _sds((m, n), jnp.float32, sh),
            _sds((m, m), jnp.float32, sh),
            _sds((n, n), jnp.float32, sh),
            _sds((m, n), jnp.bool_, sh),
        )
        out.append(StageProgram(f"edit {m}×{n}", _dense_product, args, 0, None, "dense form"))
    return out


def generate_program(
    model: LanguageModel, batch_size: int, prompt_len: int, max_new_tokens: int
) -> StageProgram:
    """`models.generate._generate`: prefill `prompt_len` tokens, then greedy-decode."""
    from models.generate import _generate

    mesh, rules = model.mesh, model.rules
    sh = _batch_sharding(mesh, rules, batch_size, prompt_len)
    tokens = _sds((batch_size, prompt_len), jnp.int32, sh)
    mask = _sds((batch_size, prompt_len), jnp.int32, sh)
    return StageProgram(
        "generate",
        _generate,
        (model, model.params, tokens, mask, max_new_tokens),
        batch_size * max_new_tokens,
        batch_size,
        f"prompt {prompt_len}, {max_new_tokens} new tokens (tokens/s counts generated tokens)",
    )


def bsn_program(
    model: LanguageModel, sites: Sequence[LinearSite], batch_size: int, seq_len: int
) -> StageProgram:
    """`kfac_mem.baselines.bsn._step` with forget and retain batches of [batch_size, seq_len]."""
    from kfac_mem.baselines import bsn

    sites = tuple(sites)
    mesh, rules = model.mesh, model.rules
    scores = {
        s.id: _sds((s.d_in, s.d_out), jnp.float32, bsn.score_sharding(model, s)) for s in sites
    }
    opt = jax.eval_shape(
        bsn.OPTIMIZER(learning_rate=0.1, momentum=0.9, weight_decay=0.0).init, scores
    )
    opt = jax.tree_util.tree_map(
        lambda s, sh: _sds(s.shape, s.dtype, sh), opt, bsn.state_shardings(model, sites, opt)
    )
    rep = NamedSharding(mesh, PartitionSpec())
    counts = [_sds((), jnp.int32, rep) for _ in sites]
    w = _sds((), jnp.float32, rep)
    sh = _batch_sharding(mesh, rules, batch_size, seq_len)
    batch = _sds((batch_size, seq_len), jnp.int32, sh)
    return StageProgram(
        "bsn",
        bsn._step,
        (model, sites, model.params, scores, opt, counts, w, batch, batch),
        2 * batch_size * seq_len,
        batch_size,
        f"{len(sites)} masked matrices; forget + retain batches",
    )
