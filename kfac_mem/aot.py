"""Ahead-of-time compilation of a jitted function for abstract arguments: memory, cost, collectives.

`compile_cost(fn, *abstract_args)` lowers and compiles `fn` for `jax.ShapeDtypeStruct` arguments
(carrying `NamedSharding`s on any mesh, including the compile-only TPU devices of
`jax.experimental.topologies`) and reads what the compiler reports, per device:

  argument / output / alias / temp / generated-code bytes    (`Compiled.memory_analysis()`)
  FLOPs and bytes accessed                                    (`Compiled.cost_analysis()`)
  collectives in the optimized HLO: kind, count, result bytes (the compiled HLO text)

Nothing is allocated and no array is read. `compile_only_env()` sets the environment that keeps
libtpu from probing a Cloud TPU VM (metadata server, accelerator type, worker hostnames) when it is
only used as a compiler; call it before the first `jax` backend is initialized.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = [
    "COLLECTIVE_KINDS",
    "Collective",
    "CompiledCost",
    "collectives_in_hlo",
    "compile_cost",
    "compile_only_env",
    "cost_of_compiled",
    "is_out_of_memory",
    "quiet_absent_tpu",
]

COLLECTIVE_KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)

# libtpu reads these at start-up; without them it tries to discover a TPU VM and logs errors about
# TPU_ACCELERATOR_TYPE and TPU_WORKER_HOSTNAMES (harmless for compile-only use). maxtext's
# train_compile.py / axlearn's AOT utilities set TPU_SKIP_MDS_QUERY the same way.
COMPILE_ONLY_ENV = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_ACCELERATOR_TYPE": "v5litepod-8",  # any valid name; the topology passed wins
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_WORKER_ID": "0",
    "TPU_STDERR_LOG_LEVEL": "3",
    "TPU_MIN_LOG_LEVEL": "3",
    # Compile-only use opens no chip: several processes (tests, parallel plans) may share libtpu
    # instead of failing on its /tmp/libtpu_lockfile.
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


def compile_only_env() -> None:
    """Set (without overriding) the libtpu variables for compile-only use on a non-TPU host."""
    for k, v in COMPILE_ONLY_ENV.items():
        os.environ.setdefault(k, v)


def quiet_absent_tpu() -> None:
    """On a host without TPU chips, `compile_only_env()`: JAX's start-up probe of an installed
    libtpu then neither logs TPU-VM discovery errors (TPU_ACCELERATOR_TYPE, worker hostnames) nor
    holds libtpu's lockfile against a concurrent `plan`. No effect on a TPU VM. Call it before
    the first JAX backend starts."""
    from jax._src import hardware_utils  # the check jax's own Cloud TPU start-up makes

    if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
        compile_only_env()


_DTYPE_BYTES = {
    "pred": 1,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_OP = re.compile(
    r"=\s*(?P<shape>\([^=]*?\)|[a-z][0-9a-z]*\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>" + "|".join(COLLECTIVE_KINDS) + r")(?P<start>-start)?\("
)


@dataclasses.dataclass(frozen=True)
class Collective:
    """One kind of collective in a compiled program: how many ops and their result bytes per
    device (summed over the ops; an async op is counted once, at its `-start`)."""

    kind: str
    count: int
    bytes: int
    largest_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _arrays_bytes(shape_text: str) -> list[float]:
    out = []
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype not in _DTYPE_BYTES:
            continue
        n = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) if dims else 1
        out.append(n * _DTYPE_BYTES[dtype])
    return out


def collectives_in_hlo(hlo_text: str) -> dict[str, Collective]:
    """Collectives of an optimized (post-partitioning) HLO module text, by kind.

    Bytes are the result size on one device: the sum over a (combined) op's outputs; for async
    all-gather / collective-permute starts, whose result tuple holds operand and output buffers,
    the largest buffer.
    """
    found: dict[str, list[float]] = {}
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if m is None:
            continue
        kind = m.group("op")
        sizes = _arrays_bytes(m.group("shape"))
        if not sizes:
            continue
        if m.group("start") and kind in ("all-gather", "collective-permute", "all-to-all"):
            size = max(sizes)
        else:
            size = sum(sizes)
        found.setdefault(kind, []).append(size)
    return {k: Collective(k, len(v), int(sum(v)), int(max(v))) for k, v in sorted(found.items())}


@dataclasses.dataclass(frozen=True)
class CompiledCost:
    """What the compiler reports for one program, per device (bytes, FLOPs)."""

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    generated_code_bytes: int
    flops: float | None
    bytes_accessed: float | None
    collectives: dict[str, Collective]
    compile_seconds: float
    platform: str
    devices: int

    @property
    def total_bytes(self) -> int:
        """Peak-resident estimate: arguments + outputs − donated (aliased) + temporaries + code."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.generated_code_bytes
        )

    @property
    def collective_bytes(self) -> int:
        return sum(c.bytes for c in self.collectives.values())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["collectives"] = {k: c.to_dict() for k, c in self.collectives.items()}
        d["total_bytes"] = self.total_bytes
        return d


_OOM = ("RESOURCE_EXHAUSTED", "Ran out of memory", "exceeds the memory", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a compile error is the compiler refusing a program that does not fit in memory."""
    text = str(error)
    return any(s.lower() in text.lower() for s in _OOM)


def _cost_dict(compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return dict(cost or {})


def compile_cost(fn: Callable, *abstract_args: Any, **jit_kwargs: Any) -> CompiledCost:
    """Compile `fn` for `abstract_args` (ShapeDtypeStruct trees with shardings) and report its cost.

    `fn` may already be jitted (its own shardings and donations are kept; `jit_kwargs` must then be
    empty) or a plain function (jitted here with `jit_kwargs`). Raises what the compiler raises;
    `is_out_of_memory(e)` tells a program that does not fit from other failures.
    """
    if jit_kwargs or not hasattr(fn, "lower"):
        fn = jax.jit(fn, **jit_kwargs)
    t0 = time.perf_counter()
    compiled = fn.lower(*abstract_args).compile()
    return cost_of_compiled(compiled, time.perf_counter() - t0)


def cost_of_compiled(compiled: Any, compile_seconds: float = 0.0) -> CompiledCost:
    """The `CompiledCost` of a `jax.stages.Compiled` (e.g. one a caller compiled to run)."""
    mem = compiled.memory_analysis()
    cost = _cost_dict(compiled)
    hlo = compiled.as_text() or ""
    shardings = jax.tree_util.tree_leaves(compiled.input_shardings)
    devices = sorted(shardings[0].device_set, key=lambda d: d.id) if shardings else []
    platform = devices[0].platform if devices else jax.default_backend()
    get = lambda name: int(getattr(mem, name, 0) or 0) if mem is not None else 0  # noqa: E731
    return CompiledCost(
        argument_bytes=get("argument_size_in_bytes"),
        output_bytes=get("output_size_in_bytes"),
        temp_bytes=get("temp_size_in_bytes"),
        alias_bytes=get("alias_size_in_bytes"),
        generated_code_bytes=get("generated_code_size_in_bytes"),
        flops=float(cost["flops"]) if "flops" in cost else None,
        bytes_accessed=float(cost["bytes accessed"]) if "bytes accessed" in cost else None,
        collectives=collectives_in_hlo(hlo),
        compile_seconds=compile_seconds,
        platform=platform,
        devices=max(1, len(devices)),
    )
