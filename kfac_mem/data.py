"""Corpora -> fixed windows of token ids.

Accepted inputs:
  * `.npy` integer arrays [windows, length] (one file, several, or a directory of them): used as
    the windows exactly as given, concatenated in order (never tokenized as text);
  * plain text files (`.txt`, or any non-jsonl file), or `.jsonl` / `.jsonl.gz` with a text field,
    or a directory of them: each document is tokenized (no special tokens), documents are
    concatenated in order (no separators, as the reference release does) and cut into
    non-overlapping windows of `seq_len`; the tail shorter than a window is dropped.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

from kfac_mem.errors import InputError
from kfac_mem.validation import check_token_ids, check_window_length, load_npy


@dataclasses.dataclass(frozen=True)
class Windows:
    """Token windows [n, seq_len] (int32, possibly a memmap) with provenance."""

    tokens: np.ndarray
    sources: tuple[str, ...]
    fingerprint: str

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def describe(self) -> dict:
        return {
            "sources": list(self.sources),
            "fingerprint": self.fingerprint,
            "n_windows": len(self),
            "seq_len": self.seq_len,
        }

    # --- collect's data-source interface (shared with `LabelledExamples`) ---------------------

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The per-item arrays a batch is cut from (leading axis = item)."""
        return (self.tokens,)

    def as_batch(self, arrays: Sequence) -> object:
        """The model's batch (`loss_targets` input) from the arrays' batch slices: token ids."""
        return arrays[0]

    @property
    def positions_per_item(self) -> int:
        """Positions one item spans (for progress units)."""
        return self.seq_len


@dataclasses.dataclass(frozen=True)
class LabelledExamples:
    """Labelled examples for classifiers (images [N, H, W, C] float32 + labels [N] int32) with
    provenance: the same data-source interface as `Windows`, so `kfac_mem.collection` streams them
    through the same code path; a batch is (inputs, labels), what `VisionModel.loss_targets`
    takes. Which positions count (the CLS position for a ViT) is the model's `loss_targets`'
    position weights."""

    inputs: np.ndarray
    labels: np.ndarray
    sources: tuple[str, ...]
    fingerprint: str

    def __post_init__(self):
        if len(self.inputs) != len(self.labels) or np.ndim(self.labels) != 1:
            raise ValueError(
                f"`inputs` [N, ...] and `labels` [N] must have the same N; got "
                f"{np.shape(self.inputs)} and {np.shape(self.labels)}."
            )

    @classmethod
    def from_arrays(
        cls, inputs: np.ndarray, labels: np.ndarray, source: str = "arrays"
    ) -> LabelledExamples:
        """Examples with a content fingerprint over both arrays (used by collect's resume check)."""
        inputs = np.asarray(inputs, np.float32)
        labels = np.asarray(labels, np.int32)
        fp = hashlib.sha256(
            (array_fingerprint(inputs) + array_fingerprint(labels)).encode()
        ).hexdigest()[:16]
        return cls(inputs, labels, (source,), fp)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def describe(self) -> dict:
        return {
            "sources": list(self.sources),
            "fingerprint": self.fingerprint,
            "n_examples": len(self),
            "example_shape": list(self.inputs.shape[1:]),
            "kind": "labelled",
        }

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.inputs, self.labels)

    def as_batch(self, arrays: Sequence) -> object:
        return (arrays[0], arrays[1])

    @property
    def positions_per_item(self) -> int:
        return 1


def array_fingerprint(a: np.ndarray) -> str:
    h = hashlib.sha256(str((a.shape, str(a.dtype))).encode())
    step = 1 << 22
    flat = a.reshape(-1)
    for i in range(0, flat.size, step):
        h.update(np.ascontiguousarray(flat[i : i + step]).tobytes())
    return h.hexdigest()[:16]


def _files(paths: Sequence[str]) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(
                sorted(
                    os.path.join(r, f)
                    for r, _, fs in os.walk(p)
                    for f in fs
                    if not f.startswith(".")
                )
            )
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"`paths`: {p}: no such file or directory.")
    if not out:
        raise InputError(f"`paths` {list(paths)}: no files found.")
    return out


def iter_documents(paths: Sequence[str], text_field: str = "text") -> Iterator[str]:
    """Documents from text files (one document per file) and jsonl files (one per line).

    A jsonl line must be an object whose `text_field` is a string; anything else is refused with
    the file and line (a null is not the text "None")."""
    for path in _files(paths):
        opener = gzip.open if path.endswith(".gz") else open
        if path.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
            with opener(path, "rt", encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{lineno}: not valid JSON ({e}).") from None
                    if not isinstance(row, dict):
                        raise InputError(
                            f"{path}:{lineno}: expected a JSON object with a `{text_field}` "
                            f"field, got a {type(row).__name__}."
                        )
                    if text_field not in row:
                        raise InputError(
                            f"{path}:{lineno}: no `{text_field}` field (name the field with "
                            f"`text_field`)."
                        )
                    if not isinstance(row[text_field], str):
                        got = "null" if row[text_field] is None else type(row[text_field]).__name__
                        raise InputError(
                            f"{path}:{lineno}: `{text_field}` must be a string, got {got}."
                        )
                    yield row[text_field]
        else:
            with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                yield f.read()


def _load_token_files(files: Sequence[str]) -> np.ndarray:
    """Concatenate `.npy` windows [n_i, L] (one L for all) along the window axis."""
    arrays = []
    for path in files:
        tokens = load_npy(path, mmap=len(files) == 1)
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise InputError(
                f"{path}: expected an integer array [windows, length], got {tokens.dtype} "
                f"{tokens.shape}. Save windows with np.save(path, ids.reshape(n, length))."
            )
        if tokens.shape[0] == 0 or tokens.shape[1] < 2:
            raise InputError(
                f"{path}: needs at least one window of length >= 2, got {tokens.shape}."
            )
        if arrays and tokens.shape[1] != arrays[0].shape[1]:
            raise InputError(
                f"{path}: windows of length {tokens.shape[1]}, but {files[0]} has "
                f"{arrays[0].shape[1]}; all `.npy` files of one corpus need one window length."
            )
        arrays.append(tokens)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def load_windows(
    paths: Sequence[str] | str,
    seq_len: int = 512,
    tokenizer=None,
    max_tokens: int | None = None,
    text_field: str = "text",
    vocab_size: int | None = None,
    max_positions: int | None = None,
) -> Windows:
    """Windows from `paths` (see module docstring).

    `.npy` files (given as a list, or every file of a directory) are token windows [n, L],
    concatenated in order; they cannot be mixed with text files. `max_tokens` (>= 1) caps the
    number of windows at max_tokens // length (at least one). With `vocab_size` every id must lie
    in [0, vocab_size) (checked before any cast), with `max_positions` the window length is
    bounded; both are checked before anything is returned.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise InputError("`paths` is empty: give at least one corpus file.")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"`max_tokens` must be >= 1, got {max_tokens}.")
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"`paths`: {p}: no such file or directory.")
    files = _files(paths)
    npy = [f for f in files if f.endswith(".npy")]
    if npy and len(npy) != len(files):
        other = next(f for f in files if not f.endswith(".npy"))
        raise InputError(
            f"`paths` mixes .npy token windows ({npy[0]}) with text ({other}); give one kind."
        )
    if npy:
        tokens = _load_token_files(npy)
        check_token_ids(tokens, vocab_size, npy[0] if len(npy) == 1 else f"`paths` {paths}")
    else:
        if tokenizer is None:
            raise InputError(
                "Text corpora need a tokenizer; the model has none. Pass token windows as .npy."
            )
        if seq_len < 2:
            raise InputError(f"`seq_len` must be >= 2, got {seq_len}.")
        budget = None if max_tokens is None else max(max_tokens, seq_len)
        ids: list[int] = []
        for doc in iter_documents(paths, text_field):
            ids.extend(tokenizer.encode(doc, add_special_tokens=False).ids)
            if budget is not None and len(ids) >= budget:
                break
        n = len(ids) // seq_len
        if n == 0:
            raise InputError(
                f"`paths` {paths}: the corpus has {len(ids)} tokens, shorter than one window of "
                f"`seq_len` {seq_len}. Give more text or a smaller `seq_len`."
            )
        tokens = np.asarray(ids[: n * seq_len], np.int64).reshape(n, seq_len)
        check_token_ids(tokens, vocab_size, f"`paths` {paths} (tokenized)")
        tokens = tokens.astype(np.int32)
    check_window_length(tokens.shape[1], max_positions, f"`paths` {paths}")
    if max_tokens is not None:
        tokens = tokens[: max(1, max_tokens // tokens.shape[1])]
    return Windows(tokens, tuple(os.path.abspath(p) for p in paths), array_fingerprint(tokens))
