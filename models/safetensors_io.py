"""Minimal lazy safetensors reader/writer on numpy memmaps (bf16 via ml_dtypes).

Reading maps each tensor from disk without copying, so callers can slice exactly the shard a device
needs; writing goes to a temporary file renamed into place (never a half-written checkpoint).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """Read-only view of one `.safetensors` file: `names`, `shape(name)`, `array(name)` (memmap)."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > os.path.getsize(path) - 8:
                    raise ValueError(f"header length {header_len} exceeds the file size")
                header = json.loads(f.read(header_len))
        except (OSError, ValueError, struct.error) as e:  # JSON and UTF-8 errors are ValueErrors
            raise ValueError(f"{path}: not a readable safetensors file ({e}).") from e
        header.pop("__metadata__", None)
        self._base = 8 + header_len
        self._entries = header

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def array(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(
                f"{self.path}: tensor `{name}` has unsupported dtype {entry['dtype']}."
            )
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - start != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(
                f"{self.path}: tensor `{name}` byte range does not match its shape {shape}."
            )
        if not shape or end == start:
            with open(self.path, "rb") as f:
                f.seek(self._base + start)
                return np.frombuffer(f.read(end - start), dtype).reshape(shape)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._base + start, shape=shape)


def write_safetensors(
    path: str, tensors: Mapping[str, np.ndarray], metadata: dict | None = None
) -> None:
    """Write `tensors` to `path` atomically (temporary file + rename)."""
    header: dict = {}
    offset = 0
    arrays = {}
    for name, value in tensors.items():
        arr = np.ascontiguousarray(value)
        if arr.dtype not in _NAMES:
            raise ValueError(f"Cannot write tensor `{name}` of dtype {arr.dtype} to safetensors.")
        arrays[name] = arr
        header[name] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays.values():
            f.write(arr.tobytes())
    os.replace(tmp, path)
