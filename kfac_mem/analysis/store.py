"""Per-example analyzer arrays in tensorstore zarr, written batch by batch.

Layout under `<out>/arrays/`:
  <set>/<name>                per-example arrays of a set (n_positions, nll)
  <set>/<layer id>/<name>     per-example arrays of a set at one layer (total, sharpness, ...)
  index.json                  written last: every array's shape and dtype, and what they mean

Each array is a zarr array whose first axis is the example index, chunked by batch, so a run
writes one batch at a time and never holds a whole set's arrays. A directory without index.json
(interrupted run) is refused by `open_arrays`. Only process 0 writes (multi-host).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tensorstore as ts

from kfac_mem.atomic import write_json_atomic

ARRAYS_DIR = "arrays"
INDEX = "index.json"
FORMAT = "kfac-mem-analysis-arrays-v1"


def _spec(path: str) -> dict[str, Any]:
    return {"driver": "zarr", "kvstore": {"driver": "file", "path": path}}


class ArrayWriter:
    """Creates zarr arrays under `<out>/arrays` and writes rows into them (process 0 only)."""

    def __init__(self, out_dir: str):
        self.root = os.path.join(os.path.abspath(out_dir), ARRAYS_DIR)
        self.active = jax.process_index() == 0
        self.entries: dict[str, dict[str, Any]] = {}
        self._arrays: dict[str, Any] = {}
        if self.active:
            if os.path.exists(self.root):
                shutil.rmtree(self.root)  # stale arrays of an earlier run; index.json goes first
            os.makedirs(self.root)

    def create(self, key: str, shape: Sequence[int], dtype, chunk_rows: int, doc: str = "") -> None:
        """A new array `key` (e.g. "memorized/model.layers.0.mlp.up_proj/total") of `shape`."""
        dtype = np.dtype(dtype)
        self.entries[key] = {"shape": [int(s) for s in shape], "dtype": dtype.str, "doc": doc}
        if not self.active:
            return
        chunks = [max(1, min(int(chunk_rows), int(shape[0])))] + [int(s) for s in shape[1:]]
        spec = {
            **_spec(os.path.join(self.root, key)),
            "metadata": {"shape": list(map(int, shape)), "chunks": chunks, "dtype": dtype.str},
        }
        self._arrays[key] = ts.open(spec, create=True, delete_existing=True).result()

    def write(self, key: str, start: int, values: np.ndarray) -> None:
        """Rows [start, start + len(values)) of array `key`."""
        if not self.active:
            return
        arr = self._arrays[key]
        values = np.asarray(values, arr.dtype.numpy_dtype)
        arr[start : start + values.shape[0]].write(values).result()

    def finalize(self, info: dict[str, Any] | None = None) -> str:
        """Write index.json (marks the arrays complete); returns its path."""
        path = os.path.join(self.root, INDEX)
        if self.active:
            write_json_atomic(
                path, {"format": FORMAT, "arrays": self.entries, "info": dict(info or {})}
            )
        return path


def create_site_arrays(writer, name, sid, n, k, n_bands, chunk, basis_names) -> None:
    """The per-example arrays of set `name` at layer `sid` (N = n examples, k top directions)."""
    p = f"{name}/{sid}"
    writer.create(f"{p}/total", (n,), np.float32, chunk, "Σ_ij Γ̃_n,ij² = ‖Γ_n‖_F²")
    writer.create(f"{p}/sharpness", (n,), np.float32, chunk, "share of total in the top-k")
    writer.create(f"{p}/participation_ratio", (n,), np.float32, chunk, "(ΣΓ̃²)² / ΣΓ̃⁴")
    writer.create(f"{p}/band_share", (n, n_bands), np.float32, chunk, "share of total per Π band")
    writer.create(f"{p}/top_values", (n, k), np.float32, chunk, "top-k Γ̃², descending")
    writer.create(f"{p}/top_index", (n, k), np.int32, chunk, "flat index i*d_in+j of top_values")
    for basis in basis_names:
        writer.create(
            f"{p}/act_{basis}",
            (n, n_bands),
            np.float32,
            chunk,
            f"mean per-token band norm ‖P_B x‖ in the {basis} basis",
        )


class ArrayStore:
    """Read access to a finished `<out>/arrays` directory."""

    def __init__(self, out_dir: str):
        root = os.path.abspath(out_dir)
        if os.path.basename(root) != ARRAYS_DIR and os.path.isdir(os.path.join(root, ARRAYS_DIR)):
            root = os.path.join(root, ARRAYS_DIR)
        self.root = root
        path = os.path.join(root, INDEX)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{root}: no {INDEX}; these per-example arrays are missing or incomplete (the "
                f"analyzer run was interrupted). Rerun the analysis with this `out_dir`."
            )
        with open(path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}.")
        self.entries: dict[str, dict[str, Any]] = meta["arrays"]
        self.info: dict[str, Any] = meta.get("info", {})

    def keys(self) -> list[str]:
        return sorted(self.entries)

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def open(self, key: str):
        """The tensorstore handle of array `key` (for reading a slice)."""
        if key not in self.entries:
            raise KeyError(f"{self.root}: no array `{key}`; available: {self.keys()[:8]}...")
        return ts.open(_spec(os.path.join(self.root, key)), open=True).result()

    def read(self, key: str) -> np.ndarray:
        """The whole array `key` as numpy."""
        return np.asarray(self.open(key).read().result())


def open_arrays(out_dir: str) -> ArrayStore:
    """Per-example arrays of an analyzer run (`<out>` or `<out>/arrays`)."""
    return ArrayStore(out_dir)
