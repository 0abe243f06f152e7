"""Measurement helpers: thread pinning, RSS, JAX compile time, JSON lines with machine and load."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from collections.abc import Iterable

# JAX emits these durations (seconds) for every jit trace, lowering and XLA compile. Nested jits
# emit nested trace events, so the total is the length of the union of the event intervals.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_intervals: list[tuple[float, float]] = []
_listening = [False]


def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment pinning torch (OpenMP/MKL), OpenBLAS and XLA:CPU to `threads` threads each."""
    env = dict(os.environ if base is None else base)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if threads == 1:
        flags += ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
    env["XLA_FLAGS"] = " ".join(flags)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_seconds() -> float:
    """JAX trace + lowering + XLA compile seconds in this process since the first call (the
    union of the event intervals, so nested traces count once)."""
    if not _listening[0]:
        import time

        import jax.monitoring

        def listen(event: str, duration: float, **_: object) -> None:
            if event in COMPILE_EVENTS:
                end = time.perf_counter()
                _intervals.append((end - duration, end))

        jax.monitoring.register_event_duration_secs_listener(listen)
        _listening[0] = True
    total, reach = 0.0, float("-inf")
    for start, end in sorted(_intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def machine() -> dict:
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "python": sys.version.split()[0],
        "load1": round(os.getloadavg()[0], 2),
    }


def emit(**row: object) -> None:
    """Print one JSON line (adds machine, Python version and the 1-minute load average)."""
    print(json.dumps({**row, **machine()}), flush=True)


def median(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None
