"""Devices to compile for: compile-only TPU devices of a named topology, or this host's CPUs."""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from kfac_mem.aot import compile_only_env
from kfac_mem.sharding import MeshConfig

_TPU = re.compile(r"^(v4|v5e|v5p|v6e|v5litepod):\d+(x\d+){1,2}$")


def topology_devices(topology: str, num_slices: int = 1) -> list[jax.Device]:
    """Devices of `topology`: `v5e:2x4`, `v5p:2x2x2`, `v6e:2x4`, `v4:2x2x1`, ... (compile-only TPU
    devices from libtpu, `num_slices` slices joined over DCN) or `cpu:N` (the first N host CPU
    devices; set XLA_FLAGS=--xla_force_host_platform_device_count=N)."""
    if num_slices < 1:
        raise ValueError(f"`num_slices` must be >= 1, got {num_slices}.")
    if topology.startswith("cpu:"):
        n = topology[4:]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"`topology` cpu:N needs a device count N >= 1, got {topology!r}.")
        if num_slices != 1:
            raise ValueError("`num_slices` applies to TPU topologies only; use cpu:N alone.")
        cpus = jax.devices("cpu")
        if len(cpus) < int(n):
            raise ValueError(
                f"`topology` {topology} needs {n} CPU devices but {len(cpus)} exist: set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting."
            )
        return list(cpus[: int(n)])
    if not _TPU.match(topology):
        raise ValueError(
            f"`topology` {topology!r} is not understood: give GEN:AxB[xC] with GEN one of v4, v5e, "
            f"v5p, v6e (e.g. v5e:2x4, v5p:2x2x2) or cpu:N."
        )
    compile_only_env()
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - jax always ships it
        raise ValueError(f"jax.experimental.topologies is unavailable: {e}") from None
    try:
        desc = topologies.get_topology_desc(
            platform="tpu",
            topology_name=topology.replace("v5litepod", "v5e"),
            num_slices=num_slices,
        )
    except Exception as e:  # libtpu missing or the name is not a valid slice shape
        raise ValueError(
            f"`topology` {topology}: the TPU compiler could not describe it ({str(e)[:200]}). "
            f"Install the `tpu` extra (pip install 'kfac-mem[tpu]') and give a valid slice shape."
        ) from None
    return sorted(desc.devices, key=lambda d: (getattr(d, "slice_index", 0) or 0, d.id))


def build_mesh(config: MeshConfig, devices: Sequence[jax.Device], num_slices: int = 1) -> Mesh:
    """`config`'s mesh over `devices`. Several slices go on the outermost mesh axis whose size they
    divide (data parallelism over DCN); within a slice, devices follow the physical layout when the
    TPU mesh utilities can place them, else device order."""
    shape = config.resolve_shape(len(devices))
    devices = list(devices)
    arr = None
    try:
        from jax.experimental import mesh_utils

        if num_slices > 1:
            axis = next((i for i, n in enumerate(shape) if n % num_slices == 0), None)
            if axis is not None:
                dcn = [1] * len(shape)
                dcn[axis] = num_slices
                ici = [n // dcn[i] for i, n in enumerate(shape)]
                arr = mesh_utils.create_hybrid_device_mesh(
                    ici, dcn, devices, allow_split_physical_axes=True
                )
        elif devices[0].platform == "tpu":
            arr = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except Exception:
        arr = None
    if arr is None:
        arr = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(arr, config.mesh_axes)
