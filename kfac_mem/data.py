"""Corpora -> fixed windows of token ids, and the one rule that joins documents into windows.

Accepted inputs:
  * `.npy` integer arrays [windows, length] (one file, several, or a directory of them): used as
    the windows exactly as given, concatenated in order (never tokenized as text);
  * plain text files (`.txt`, or any non-jsonl file; one document each), or `.jsonl` /
    `.jsonl.gz` with a text field (one document per row), or a directory of them: documents are
    tokenized (no special tokens added) and joined by `join_documents` (docs/design.md §2.10).

The joining rule, used by collect, evaluate and analyze alike (`join_documents`): every document
is followed by the model's end-of-text id `eos_id` (when the model declares one; without one the
documents are concatenated with nothing between them), the stream is cut into consecutive
non-overlapping windows of `seq_len`, and the tail shorter than a window is dropped. Mining cuts
its candidate windows inside each document instead (a mined window never spans two documents).

The windows are a prefix-stable stream: the first k windows of a larger budget (`max_tokens`) are
the windows of a smaller one, and a text corpus's fingerprint describes its source (the files'
content, the tokenizer, `text_field`, `seq_len` and the joining rule), not the truncated windows,
so a factor run can be extended with more of the same corpus (docs/design.md §5.2).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from kfac_mem.errors import InputError
from kfac_mem.validation import check_token_ids, check_window_length, load_npy


@dataclasses.dataclass(frozen=True)
class Windows:
    """Token windows [n, seq_len] (int32, possibly a memmap) with provenance.

    `fingerprint` identifies the stream these windows are a prefix of: for `load_windows`, the
    source (the full `.npy` arrays, or the text files with tokenizer, `seq_len` and joining rule),
    never the budget; for windows built in memory, whatever the caller gives (usually
    `array_fingerprint(tokens)`). `stream` (text only) is the token stream's fingerprint without
    `seq_len`, and `join` the joining rule ("eos:<id>" or "none"); both None otherwise.
    """

    tokens: np.ndarray
    sources: tuple[str, ...]
    fingerprint: str
    stream: str | None = None
    join: str | None = None

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def describe(self) -> dict:
        """Provenance for a run's metadata; `n_windows` and `sources` are the budget and the
        location (`BUDGET_KEYS`), the rest identifies the corpus (docs/design.md §5.2)."""
        out: dict[str, Any] = {
            "sources": list(self.sources),
            "fingerprint": self.fingerprint,
            "n_windows": len(self),
            "seq_len": self.seq_len,
        }
        if self.stream is not None:
            out["stream"] = self.stream
        if self.join is not None:
            out["join"] = self.join
        return out

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


# Keys of a corpus description that are not part of a factor run's identity: how many windows were
# asked for (the budget) and where the files lie (their content is in the fingerprint).
BUDGET_KEYS = ("n_windows", "sources")


def corpus_identity(corpus: dict[str, Any] | None) -> dict[str, Any] | None:
    """A corpus description without its budget and location (`BUDGET_KEYS`): what must match for
    a factor run to be continued or extended (docs/design.md §5.2)."""
    if not isinstance(corpus, dict):
        return corpus
    return {k: v for k, v in corpus.items() if k not in BUDGET_KEYS}


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


def join_rule(eos_id: int | None) -> str:
    """The joining rule's name as recorded in a corpus description: "eos:<id>" or "none"."""
    return "none" if eos_id is None else f"eos:{int(eos_id)}"


def join_documents(
    documents: Iterable[Sequence[int] | np.ndarray],
    seq_len: int,
    eos_id: int | None,
    max_windows: int | None = None,
) -> np.ndarray:
    """The one rule that joins tokenized documents into windows (docs/design.md §2.10).

    Each document's ids [n_i] are followed by `eos_id` (None: nothing; the documents are then
    concatenated directly), the stream is cut into consecutive windows of `seq_len` and the tail
    shorter than a window is dropped. Reading stops once `max_windows` windows are complete, so
    the first k windows never depend on the budget (a prefix-stable stream).

    Returns int64 [n, seq_len] (n ≤ `max_windows`; 0 rows when the stream is shorter than one
    window).
    """
    if seq_len < 2:
        raise InputError(f"`seq_len` must be >= 2, got {seq_len}.")
    need = None if max_windows is None else max_windows * seq_len
    parts: list[np.ndarray] = []
    total = 0
    sep = None if eos_id is None else np.asarray([int(eos_id)], np.int64)
    for doc in documents:
        ids = np.asarray(doc, np.int64).reshape(-1)
        parts.append(ids)
        total += ids.size
        if sep is not None:
            parts.append(sep)
            total += 1
        if need is not None and total >= need:
            break
    flat = np.concatenate(parts) if parts else np.zeros((0,), np.int64)
    n = flat.size // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return flat[: n * seq_len].reshape(n, seq_len)


def tokenize_documents(texts: Iterable[str], tokenizer, batch: int = 64) -> Iterator[list[int]]:
    """Token ids of each text (no special tokens added), in order; `encode_batch` when the
    tokenizer has it (a `tokenizers.Tokenizer`), else one `encode` per text."""
    if not hasattr(tokenizer, "encode_batch"):
        for text in texts:
            yield list(tokenizer.encode(text, add_special_tokens=False).ids)
        return
    pending: list[str] = []
    for text in texts:
        pending.append(text)
        if len(pending) == batch:
            for enc in tokenizer.encode_batch(pending, add_special_tokens=False):
                yield list(enc.ids)
            pending = []
    if pending:
        for enc in tokenizer.encode_batch(pending, add_special_tokens=False):
            yield list(enc.ids)


def tokenizer_fingerprint(tokenizer) -> str:
    """16 hex digits of sha256 over the tokenizer's serialization (`to_str()`, a
    `tokenizers.Tokenizer`), else over its class name."""
    to_str = getattr(tokenizer, "to_str", None)
    text = to_str() if callable(to_str) else type(tokenizer).__qualname__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def files_fingerprint(files: Sequence[str]) -> str:
    """16 hex digits of sha256 over every file's size and content, in order (names and locations
    do not enter: a moved corpus keeps its fingerprint)."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{os.path.getsize(path)}\n".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


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


# The default of `eos_id` wherever text is cut into windows: text corpora need the caller to choose
# (the model's end-of-text id, or None), so no caller silently joins documents another way.
EOS_REQUIRED: Any = object()


def load_windows(
    paths: Sequence[str] | str,
    seq_len: int = 512,
    tokenizer=None,
    max_tokens: int | None = None,
    text_field: str = "text",
    vocab_size: int | None = None,
    max_positions: int | None = None,
    *,
    eos_id: int | None = EOS_REQUIRED,
) -> Windows:
    """Windows int32 [n, L] from `paths` (see module docstring).

    `.npy` files (given as a list, or every file of a directory) are token windows [n, L],
    concatenated in order; they cannot be mixed with text files. Text is tokenized with
    `tokenizer` and joined by `join_documents` with `eos_id` after every document: pass the
    model's end-of-text id (`model.config.eos_token_id`), or None to join without a separator
    (required for text, so no caller silently uses another rule; docs/design.md §2.10).

    `max_tokens` (>= 1) caps the number of windows at max_tokens // L (at least one); the windows
    are the first ones of the stream the whole source gives, and the fingerprint describes the
    source, not the budget (a factor run on fewer windows can be extended; docs/design.md §5.2).
    With `vocab_size` every id must lie in [0, vocab_size) (checked before any cast), with
    `max_positions` the window length is bounded; both are checked before anything is returned.
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
    sources = tuple(os.path.abspath(p) for p in paths)
    if npy:
        tokens = _load_token_files(npy)
        check_token_ids(tokens, vocab_size, npy[0] if len(npy) == 1 else f"`paths` {paths}")
        check_window_length(tokens.shape[1], max_positions, f"`paths` {paths}")
        fingerprint = array_fingerprint(tokens)  # of every window given: the budget never enters
        if max_tokens is not None:
            tokens = tokens[: max(1, max_tokens // tokens.shape[1])]
        return Windows(tokens, sources, fingerprint)
    if tokenizer is None:
        raise InputError(
            "Text corpora need a tokenizer; the model has none. Pass token windows as .npy."
        )
    if eos_id is EOS_REQUIRED:
        raise InputError(
            "Text corpora need `eos_id`: the id that follows every document (the model's "
            "end-of-text id, `model.config.eos_token_id`), or None to join documents with "
            "nothing between them (docs/design.md §2.10)."
        )
    if seq_len < 2:
        raise InputError(f"`seq_len` must be >= 2, got {seq_len}.")
    check_window_length(seq_len, max_positions, f"`paths` {paths}")
    max_windows = None if max_tokens is None else max(1, max_tokens // seq_len)
    texts = iter_documents(paths, text_field)
    tokens = join_documents(tokenize_documents(texts, tokenizer), seq_len, eos_id, max_windows)
    if tokens.shape[0] == 0:
        raise InputError(
            f"`paths` {paths}: the corpus is shorter than one window of `seq_len` {seq_len} "
            f"tokens. Give more text or a smaller `seq_len`."
        )
    check_token_ids(tokens, vocab_size, f"`paths` {paths} (tokenized)")
    rule = join_rule(eos_id)
    stream = _digest(files_fingerprint(files), tokenizer_fingerprint(tokenizer), text_field, rule)
    return Windows(
        tokens.astype(np.int32), sources, _digest(stream, seq_len), stream=stream, join=rule
    )
