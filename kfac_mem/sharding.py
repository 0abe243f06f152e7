"""Meshes and logical-axis rules from config (declared once, MaxText style).

A mesh config (`kfac_mem/configs/mesh/<name>.yaml` or a user YAML path) names the mesh axes, their
sizes (-1 = all remaining devices) and the rule table mapping logical axis names (`models.axes`) to
mesh axes. Code only names logical axes; swapping the whole placement is swapping the file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

import jax
import numpy as np
import yaml
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models.partitioning import REPLICATE_INDIVISIBLE, Rules, logical_to_sharding, logical_to_spec

__all__ = [
    "MeshConfig",
    "data_axes",
    "load_mesh_config",
    "logical_to_sharding",
    "logical_to_spec",
    "make_mesh",
    "replicated",
]


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    mesh_axes: tuple[str, ...]
    mesh_shape: tuple[tuple[str, int], ...]
    rules: tuple[tuple[str, Any], ...]
    name: str = "custom"

    def with_sizes(self, **sizes: int) -> MeshConfig:
        unknown = set(sizes) - set(self.mesh_axes)
        if unknown:
            raise ValueError(
                f"Mesh axes {sorted(unknown)} not in this mesh config {self.mesh_axes}."
            )
        shape = tuple((a, sizes.get(a, n)) for a, n in self.mesh_shape)
        return dataclasses.replace(self, mesh_shape=shape)

    def resolve_shape(self, n_devices: int) -> tuple[int, ...]:
        sizes = dict(self.mesh_shape)
        fixed = int(np.prod([n for n in sizes.values() if n != -1]))
        free = [a for a, n in sizes.items() if n == -1]
        if len(free) > 1:
            raise ValueError(f"Mesh config `{self.name}`: at most one axis may be -1, got {free}.")
        if free:
            if n_devices % fixed:
                raise ValueError(
                    f"Mesh config `{self.name}`: fixed axes multiply to {fixed}, which does not divide "
                    f"the {n_devices} devices. Change the axis sizes with `sizes` (e.g. tensor=1)."
                )
            sizes[free[0]] = n_devices // fixed
        shape = tuple(sizes[a] for a in self.mesh_axes)
        if int(np.prod(shape)) != n_devices:
            raise ValueError(
                f"Mesh config `{self.name}`: shape {dict(zip(self.mesh_axes, shape))} needs "
                f"{int(np.prod(shape))} devices but {n_devices} are in use."
            )
        return shape

    def build(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
        devices = list(jax.devices() if devices is None else devices)
        shape = self.resolve_shape(len(devices))
        if len(devices) == len(jax.devices()):
            return jax.make_mesh(
                shape,
                self.mesh_axes,
                devices=devices,
                axis_types=(jax.sharding.AxisType.Auto,) * len(self.mesh_axes),
            )
        return Mesh(np.asarray(devices).reshape(shape), self.mesh_axes)


def load_mesh_config(name_or_path: str = "fsdp") -> MeshConfig:
    """A bundled mesh config by name (`fsdp`, `data`, `fsdp_tp`) or a YAML file path."""
    if os.path.isfile(name_or_path):
        with open(name_or_path) as f:
            raw = yaml.safe_load(f)
        name = os.path.basename(name_or_path)
    else:
        try:
            text = (
                resources.files("kfac_mem.configs.mesh")
                .joinpath(f"{name_or_path}.yaml")
                .read_text()
            )
        except FileNotFoundError:
            bundled = sorted(
                p.name[:-5]
                for p in resources.files("kfac_mem.configs.mesh").iterdir()
                if p.name.endswith(".yaml")
            )
            raise ValueError(
                f"Unknown mesh config `{name_or_path}`: give a YAML path or one of {bundled}."
            ) from None
        raw = yaml.safe_load(text)
        name = name_or_path
    unknown = set(raw) - {"mesh_axes", "mesh_shape", "logical_axis_rules", "replicate_indivisible"}
    if unknown:
        raise ValueError(f"Mesh config `{name}`: unknown keys {sorted(unknown)}.")
    axes = tuple(raw["mesh_axes"])
    shape = raw.get("mesh_shape", {a: -1 if i == 0 else 1 for i, a in enumerate(axes)})
    if set(shape) != set(axes):
        raise ValueError(
            f"Mesh config `{name}`: mesh_shape keys {sorted(shape)} must equal mesh_axes {axes}."
        )
    rules = []
    for rule in raw.get("logical_axis_rules", []):
        logical, mesh_axes = rule
        for a in [mesh_axes] if isinstance(mesh_axes, str) else (mesh_axes or []):
            if a not in axes:
                raise ValueError(
                    f"Mesh config `{name}`: rule for `{logical}` names unknown mesh axis `{a}`."
                )
        rules.append(
            (
                logical,
                mesh_axes if mesh_axes is None or isinstance(mesh_axes, str) else tuple(mesh_axes),
            )
        )
    if raw.get("replicate_indivisible"):
        rules.append((REPLICATE_INDIVISIBLE, "allow"))
    return MeshConfig(axes, tuple((a, int(shape[a])) for a in axes), tuple(rules), name)


def make_mesh(
    name_or_path: str = "fsdp", devices: Sequence[jax.Device] | None = None, **sizes: int
) -> tuple[Mesh, Rules]:
    """Build (mesh, rules) from a mesh config, optionally overriding axis sizes."""
    cfg = load_mesh_config(name_or_path)
    if sizes:
        cfg = cfg.with_sizes(**sizes)
    return cfg.build(devices), cfg.rules


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_axes(mesh: Mesh, rules: Rules) -> tuple[str, ...]:
    """Mesh axes the batch is split over (the `activation_batch` rule), in mesh order."""
    spec = logical_to_spec(("activation_batch",), (mesh.size,), mesh, rules)[0]
    if spec is None:
        return ()
    return (spec,) if isinstance(spec, str) else tuple(spec)
