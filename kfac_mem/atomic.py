"""Atomic file writes: every artifact is written to a temporary file beside its destination and
moved into place with `os.replace`, so a reader (or an interrupted run) never sees half a file.

In a multi-process (multi-host) run only process 0 writes; the others return the path unchanged,
and `after_primary_wrote` is the barrier they pass before reading what process 0 wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import IO, Any

import jax
import numpy as np


def write_atomic(path: str, write: Callable[[IO], None], binary: bool = False) -> str:
    """Call `write(file)` on a temporary file, then move it to `path`. Returns `path`."""
    if jax.process_index() != 0:
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"  # keeps the extension (np.save, savefig rely on it)
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text_atomic(path: str, text: str) -> str:
    return write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: str, obj: Any) -> str:
    """JSON (indented, UTF-8, trailing newline)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str, rows: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line."""
    return write_atomic(
        path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )


def save_npy_atomic(path: str, array: np.ndarray) -> str:
    return write_atomic(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False), True)


def after_primary_wrote(tag: str) -> None:
    """Barrier for every process of a multi-process run, once process 0 has written files the
    others read next (a no-op with one process). `tag` names the point (unique per call site and
    output directory)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(tag)
