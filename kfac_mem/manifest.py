"""The run manifest every stage records beside its outputs: what ran, where, with which seeds.

`run_manifest(seeds)` -> {"packages": {name: version}, "python", "platform", "jax": {"backend",
"device_kind", "device_count", "local_device_count", "process_count", "process_index"},
"seeds": {...}, "git": {"commit", "dirty"} (None outside a checkout), "written"}.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["PACKAGES", "git_state", "package_versions", "run_manifest", "shown_path"]

# Distributions whose versions decide numbers (absent ones are recorded as None).
PACKAGES = (
    "kfac-mem",
    "jax",
    "jaxlib",
    "libtpu",
    "jax-cuda12-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "kfac-jax",
    "numpy",
    "scipy",
    "safetensors",
    "tokenizers",
    "transformers",
    "torch",
    "scikit-learn",
    "rapidfuzz",
)


@functools.cache
def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """{distribution: installed version or None}."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def git_state(directory: str | None = None) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the checkout holding this package (None when not run from one)."""
    root = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def run_manifest(seeds: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of this process's run (see the module docstring); `seeds` names every seed
    the stage used, e.g. {"labels": 0, "split": 0}."""
    import jax

    devices = jax.devices()
    return {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "jax": {
            "backend": jax.default_backend(),
            "device_kind": devices[0].device_kind,
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(),
            "process_index": jax.process_index(),
        },
        "seeds": dict(seeds or {}),
        "git": git_state(),
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def shown_path(path: str | None) -> str | None:
    """A path as reports and summaries record it: relative to the working directory when inside
    it, so a result committed from a checkout names no machine's paths."""
    if not path:
        return path
    path = os.fspath(path)
    if os.path.isabs(path) and os.path.commonpath([path, os.getcwd()]) == os.getcwd():
        return os.path.relpath(path)
    return path
