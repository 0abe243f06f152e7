"""The jitted accumulation step: masked outer products of a batch into the factor sums.

The step runs under `jax.jit` on a Mesh with the batch split over the n_data data shards and
parameters placed by the model's rules. The totals of each factor [d, d] are sharded by rows over
all n devices (logical axis `factor_rows`). How a step's Σ x xᵀ (x = masked activations or output
gradients of the step, N positions × d, in the activation dtype of b_x bytes; sums in the
accumulate dtype of b_acc bytes) reaches them is the reduce mode (docs/design.md §7.3):

  "checkpoint"  each data shard adds its own tokens into its own full partial sum [n_data, d, d]
                (sharded on the leading axis): no communication per step, one full [d, d] per
                device per factor; the partials are reduced into the totals at checkpoints
                (`make_fold`).
  "step"        the totals are updated every step and nothing full-size is kept. Per site, one of
                "gather":  all-gather x over the data axes (each device receives
                           (n_data−1)/n_data · N·d·b_x bytes), then each device forms only its own
                           row block x[:, rows]ᵀ x [d/n, d] (temp N·d·b_x + d²/n·b_acc);
                "scatter": each device forms the full Σ_local x xᵀ [d, d] of its own tokens and
                           XLA reduce-scatters it into the rows (each device moves
                           (n−1)/n · d²·b_acc bytes; temp d²·b_acc).
                By default a site takes "gather" when N·b_x ≤ d·b_acc (less traffic and less
                temporary memory), else "scatter" (`CollectConfig.scheme` forces one).

"auto" (the default) is resolved before a step is built, by `reduce.choose_reduce`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from kfac_mem.collection import store as fstore
from kfac_mem.collection.capture import inputs_and_output_grads
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.sites import input_groups
from kfac_mem.protocol import CurvatureModel
from kfac_mem.sharding import data_axes, logical_to_sharding, logical_to_spec
from models import axes
from models.sites import LinearSite


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
