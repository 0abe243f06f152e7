"""Ahead-of-time cost of a jitted function: XLA's compiled memory and cost analyses, per device.

`compile_cost(fn, *abstract_args)` lowers and compiles `jax.jit(fn)` for arguments given as arrays
or `jax.ShapeDtypeStruct`s (with shardings: compile-only TPU devices from
`jax.experimental.topologies` work the same way), allocates nothing, and returns the compiler's
figures. Bytes are per device (XLA compiles one SPMD program per device); FLOPs and bytes accessed
are the cost analysis's per-device totals, 0 where the backend reports none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["CompiledCost", "compile_cost", "cost_of_compiled"]


@dataclasses.dataclass(frozen=True)
class CompiledCost:
    """One device's share of a compiled program (bytes; FLOPs and bytes accessed per call)."""

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int  # outputs that reuse a donated argument's buffer
    generated_code_bytes: int
    flops: float
    bytes_accessed: float

    @property
    def total_bytes(self) -> int:
        """Peak device memory the program needs: arguments + outputs + temporaries + code, with
        donated (aliased) outputs counted once."""
        return (
            self.argument_bytes
            + self.output_bytes
            + self.temp_bytes
            + self.generated_code_bytes
            - self.alias_bytes
        )


def cost_of_compiled(compiled: Any) -> CompiledCost:
    """The `CompiledCost` of a `jax.stages.Compiled`."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    cost = cost or {}
    get = lambda name: int(getattr(mem, name, 0) or 0) if mem is not None else 0  # noqa: E731
    return CompiledCost(
        argument_bytes=get("argument_size_in_bytes"),
        output_bytes=get("output_size_in_bytes"),
        temp_bytes=get("temp_size_in_bytes"),
        alias_bytes=get("alias_size_in_bytes"),
        generated_code_bytes=get("generated_code_size_in_bytes"),
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
    )


def compile_cost(fn: Callable, *abstract_args: Any, **jit_kwargs: Any) -> CompiledCost:
    """Compile `jax.jit(fn, **jit_kwargs)` for `abstract_args` (arrays or ShapeDtypeStructs) and
    return its per-device `CompiledCost`. An already-jitted `fn` is lowered as is."""
    jitted = fn if hasattr(fn, "lower") and not jit_kwargs else jax.jit(fn, **jit_kwargs)
    return cost_of_compiled(jitted.lower(*abstract_args).compile())
