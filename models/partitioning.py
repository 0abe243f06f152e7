"""Resolve logical axis names to `NamedSharding`s on a mesh.

The rule table is data: a sequence of `(logical_name, mesh_axes)` pairs, where `mesh_axes` is a mesh
axis name, a list of them, or None.

Parameters (named: `param_name` given) must divide: a mesh axis of size > 1 that does not divide
its dimension raises an error naming the parameter, the dimension, the axis and the fixes, because
a silently replicated 7B weight is an out-of-memory later. The rule-table entry
`(REPLICATE_INDIVISIBLE, "allow")` (mesh YAML: `replicate_indivisible: true`) replicates such a
dimension instead and logs each parameter it does so for. Activations and other unnamed arrays
(sharding constraints, batch rows, factor rows) keep the lenient rule: an axis that does not divide
is dropped for that dimension.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]

# Rule-table entry (REPLICATE_INDIVISIBLE, "allow") lets parameters replicate a dimension that a
# mesh axis does not divide (each one logged) instead of raising.
REPLICATE_INDIVISIBLE = "replicate_indivisible"
_log = logging.getLogger("models.partitioning")


def replication_allowed(rules: Rules) -> bool:
    return any(name == REPLICATE_INDIVISIBLE and value for name, value in rules)


def _mesh_axes_for(name: str | None, rules: Rules) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            if isinstance(mesh_axes, str):
                return (mesh_axes,)
            return tuple(mesh_axes)
    return ()


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules,
    param_name: str | None = None,
) -> PartitionSpec:
    """PartitionSpec for an array of `shape` whose dims carry `logical_axes`.

    Each mesh axis is used at most once; mesh axes of size 1 are dropped. A mesh axis (or a group of
    them) that does not divide the dimension: for a parameter (`param_name` given) a ValueError, or
    replication logged per parameter when the rules allow it (`REPLICATE_INDIVISIBLE`); for any
    other array the axis is dropped so the dimension is replicated.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(
            f"`logical_axes` {tuple(logical_axes)} has {len(logical_axes)} names but the array has "
            f"shape {tuple(shape)}; give one name (or None) per dimension."
        )
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        chosen = []
        size = 1
        for axis in _mesh_axes_for(name, rules):
            if axis not in mesh.shape:
                raise ValueError(
                    f"Sharding rule maps logical axis `{name}` to mesh axis `{axis}`, but the mesh "
                    f"has axes {tuple(mesh.shape)}. Fix the rule table or the mesh config."
                )
            n = mesh.shape[axis]
            if axis in used or n == 1:
                continue
            if dim % (size * n) != 0:
                if param_name is not None:
                    _indivisible(param_name, logical_axes, shape, name, dim, axis, n, size, rules)
                continue
            chosen.append(axis)
            size *= n
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def _indivisible(param, logical_axes, shape, name, dim, axis, n, size, rules) -> None:
    i = list(logical_axes).index(name)
    what = (
        f"parameter `{param}` (shape {tuple(shape)}): dimension {i} (logical axis `{name}`, size "
        f"{dim}) is not divisible by mesh axis `{axis}` (size {n}"
        + (f", after axes of total size {size}" if size > 1 else "")
        + ")"
    )
    if replication_allowed(rules):
        _log.warning("replicating %s over mesh axis `%s`", what, axis)
        return
    raise ValueError(
        f"Cannot shard {what}. Fix: choose a mesh size for `{axis}` that divides {dim} (e.g. "
        f"`sizes` {axis}=1), map `{name}` to another axis or null in the rule table, or set "
        f"`replicate_indivisible: true` in the mesh config to replicate it (logged per parameter)."
    )


def logical_to_sharding(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules,
    param_name: str | None = None,
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules, param_name))


def tree_shardings(
    logical_tree: Any, shape_tree: Any, mesh: Mesh | None, rules: Rules | None
) -> Any:
    """Map a tree of a module's parameter logical-axis tuples and a matching tree of shapes to
    NamedShardings (None without a mesh); indivisible sharded dimensions raise (see module doc)."""
    if mesh is None:
        return None
    return jax.tree_util.tree_map_with_path(
        lambda path, axes, s: logical_to_sharding(
            axes, s.shape, mesh, rules or (), _path_name(path)
        ),
        logical_tree,
        shape_tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x),
    )


def _path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def abstract_module_params(module: Any, *example: Any) -> tuple[Any, Any]:
    """(ShapeDtypeStruct tree, logical-axes tree) of a Flax module's parameters for `example`
    inputs, without allocating."""
    import flax.linen as nn

    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *example))
    logical = jax.tree_util.tree_map(
        tuple,
        nn.get_partition_spec(variables)["params"],
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    return nn.unbox(variables)["params"], logical


def init_module_params(module: Any, example: Sequence[Any], seed: int, shardings: Any) -> Any:
    """The module's random parameters, created directly in `shardings` (None: default device)."""
    import flax.linen as nn

    def init(key):
        return nn.unbox(module.init(key, *example))["params"]

    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


_ACTIVATION_SHARDING: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "activation_sharding", default=None
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Rules | None) -> Iterator[None]:
    """Within this context (entered *inside* the traced function), `constrain` is active."""
    token = _ACTIVATION_SHARDING.set(None if mesh is None or rules is None else (mesh, rules))
    try:
        yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op outside `activation_sharding`."""
    ctx = _ACTIVATION_SHARDING.get()
    if ctx is None or ctx[0].size == 1:
        return x
    mesh, rules = ctx
    return jax.lax.with_sharding_constraint(
        x, logical_to_sharding(logical_axes, x.shape, mesh, rules)
    )
