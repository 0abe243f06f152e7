"""Named example sets for the analyzer: token windows plus the positions whose loss counts.

A set comes from
  * a jsonl file of windows as written by `kfac-mem mine` (rows with `prefix_ids`, `suffix_ids`;
    window = prefix ‖ suffix), or an in-memory list of such rows;
  * a text file (`.txt`, or `.jsonl` rows with a `text` field, or a directory of them): documents
    are tokenized with the model's tokenizer and joined into windows of `seq_len` by the rule
    collect and evaluate use (`kfac_mem.data.join_documents`: the model's EOS id after every
    document; docs/design.md §2.10);
  * a `.npy` int array [N, L] of ready-made windows, or such an array in memory.

`positions[n, t] = 1` marks the positions t whose next-token cross-entropy enters example n's loss
L_n: every position but the last (`all`, default), or only those predicting suffix tokens
(`suffix`, windows with a prefix only; text sets have no suffix and use all positions).

Window rows may differ in prefix and suffix length (the quotes protocol, docs/design.md §3): the
windows are then right-padded (token 0) to the longest and the padded positions carry no loss
(`positions` 0 there and at each window's own last token). A causal model never lets a real token
see a pad that follows it, so every per-example number equals that of the window alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kfac_mem.data import EOS_REQUIRED
from kfac_mem.errors import InputError
from kfac_mem.evaluation.io import iter_jsonl, read_memorized
from kfac_mem.validation import check_token_ids

POSITIONS = ("all", "suffix")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass(frozen=True)
class ExampleSet:
    """Token windows of one named set.

    Attributes:
      name: set name (letters, digits, `_ . -`; used in file paths).
      tokens: int32 [N, L] windows.
      positions: float32 [N, L]; 1 where the next-token loss at t counts (last column always 0).
      source: where it came from (path or "memory").
      kind: "windows" (prefix/suffix rows), "text" or "tokens".
      prefix_len: prefix length of prefix/suffix windows when every row shares it, else None.
      lengths: int64 [N], each window's own length (≤ L; shorter ones are right-padded), or None
        when every window fills the L columns.
    """

    name: str
    tokens: np.ndarray
    positions: np.ndarray
    source: str
    kind: str
    prefix_len: int | None = None
    lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def describe(self) -> dict[str, Any]:
        lengths = self.lengths if self.lengths is not None else np.full(len(self), self.seq_len)
        return {
            "source": self.source,
            "kind": self.kind,
            "examples": len(self),
            "window_length": int(lengths.max()),
            "window_length_range": [int(lengths.min()), int(lengths.max())],
            "prefix_length": self.prefix_len,
            "loss_positions": int(self.positions.sum()),
        }

    def padded_to(self, length: int) -> ExampleSet:
        """The same windows right-padded (token 0, no loss positions) to `length` ≥ L columns.

        Per-example numbers do not change (module docstring), except that sampled labels are drawn
        for the padded shape (other draws from the same distribution). The analyzer pads every
        set to a length bucket so that sets of nearby lengths share one compiled program."""
        if length < self.seq_len:
            raise ValueError(f"`length` {length} is shorter than the windows ({self.seq_len}).")
        if length == self.seq_len:
            return self
        extra = ((0, 0), (0, length - self.seq_len))
        lengths = self.lengths if self.lengths is not None else np.full(len(self), self.seq_len)
        return dataclasses.replace(
            self,
            tokens=np.pad(self.tokens, extra),
            positions=np.pad(self.positions, extra),
            lengths=np.asarray(lengths, np.int64),
        )

    def head(self, n: int) -> ExampleSet:
        """The first `n` examples."""
        return dataclasses.replace(
            self,
            tokens=self.tokens[:n],
            positions=self.positions[:n],
            lengths=None if self.lengths is None else self.lengths[:n],
        )


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"Set name {name!r} is invalid: use letters, digits, `_`, `.` or `-` (it names "
            f"directories under the output)."
        )
    return name


def position_mask(
    n: int,
    length: int,
    positions: str,
    prefix_len: int | np.ndarray | None,
    lengths: np.ndarray | None = None,
) -> np.ndarray:
    """float32 [n, length] loss-position mask (see module docstring).

    `prefix_len`: one prefix length or one per row (int [n]); `lengths`: each row's own window
    length (int [n]; None: every row is `length` long). Position t counts when it predicts a
    real token (t < own length − 1) and, with `positions="suffix"`, a suffix token.
    """
    if positions not in POSITIONS:
        raise ValueError(f"`positions` must be one of {POSITIONS}, got {positions!r}.")
    t = np.arange(length)[None, :]
    start = np.zeros((n, 1), np.int64)
    if positions == "suffix" and prefix_len is not None:
        start = np.broadcast_to(np.asarray(prefix_len, np.int64).reshape(-1, 1) - 1, (n, 1))
        start = np.maximum(start, 0)
    end = np.full((n, 1), length - 1) if lengths is None else np.asarray(lengths).reshape(-1, 1) - 1
    return ((t >= start) & (t < end)).astype(np.float32)


def _check_tokens(name: str, tokens: np.ndarray, vocab_size: int | None, where: str) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"Set `{name}` ({where}): expected an integer token array [N, L], got "
            f"{tokens.dtype} {tokens.shape}."
        )
    if tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(
            f"Set `{name}` ({where}): needs at least one window of length >= 2, got {tokens.shape}."
        )
    check_token_ids(tokens, vocab_size, f"Set `{name}` ({where})")
    return tokens.astype(np.int32)


def _rows_to_tokens(
    name: str, rows: Sequence[Mapping[str, Any]], where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows int64 [N, L] right-padded with 0, window lengths [N], prefix lengths [N])."""
    out, prefix_lens = [], []
    for i, row in enumerate(rows):
        line = row.get("line", i + 1) if isinstance(row, Mapping) else i + 1
        if not isinstance(row, Mapping) or not all(f in row for f in ("prefix_ids", "suffix_ids")):
            raise InputError(
                f"Set `{name}` ({where}) row {line}: missing field(s) `prefix_ids`/`suffix_ids`; "
                f"every row needs both (lists of token ids, as `kfac-mem mine` writes)."
            )
        prefix, suffix = list(row["prefix_ids"]), list(row["suffix_ids"])
        if not prefix or not suffix:
            raise InputError(f"Set `{name}` ({where}) row {line}: empty prefix or suffix.")
        if not all(
            isinstance(t, int | np.integer) and not isinstance(t, bool) for t in prefix + suffix
        ):
            raise InputError(f"Set `{name}` ({where}) row {line}: token ids must be integers.")
        out.append(prefix + suffix)
        prefix_lens.append(len(prefix))
    if not out:
        raise InputError(f"Set `{name}` ({where}): no rows.")
    lengths = np.asarray([len(w) for w in out], np.int64)
    tokens = np.zeros((len(out), int(lengths.max())), np.int64)
    for i, w in enumerate(out):
        tokens[i, : len(w)] = w
    return tokens, lengths, np.asarray(prefix_lens, np.int64)


def from_rows(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    positions: str = "all",
    vocab_size: int | None = None,
    source: str = "memory",
) -> ExampleSet:
    """A set from memorized-window rows ({prefix_ids, suffix_ids, ...}), of one or of varying
    prefix/suffix lengths (see module docstring)."""
    check_name(name)
    raw, lengths, prefix_lens = _rows_to_tokens(name, rows, source)
    tokens = _check_tokens(name, raw, vocab_size, source)
    uniform = bool((lengths == lengths[0]).all() and (prefix_lens == prefix_lens[0]).all())
    mask = position_mask(
        len(tokens),
        tokens.shape[1],
        positions,
        prefix_lens,
        None if uniform else lengths,
    )
    return ExampleSet(
        name,
        tokens,
        mask,
        source,
        "windows",
        int(prefix_lens[0]) if uniform else None,
        None if uniform else lengths,
    )


def from_tokens(
    name: str,
    tokens: np.ndarray,
    vocab_size: int | None = None,
    source: str = "memory",
    kind: str = "tokens",
) -> ExampleSet:
    """A set from token windows [N, L] (all positions but the last count)."""
    check_name(name)
    tokens = _check_tokens(name, tokens, vocab_size, source)
    return ExampleSet(name, tokens, position_mask(*tokens.shape, "all", None), source, kind)


def _is_window_jsonl(path: str) -> bool:
    for _, obj in iter_jsonl(path):
        return "prefix_ids" in obj or "suffix_ids" in obj
    raise ValueError(f"{path}: empty file; a set needs at least one row.")


def is_text_source(path: str) -> bool:
    """Whether a set file is text to be cut into windows (not .npy, not jsonl windows)."""
    if not os.path.exists(path) or path.endswith(".npy"):
        return False
    if path.endswith((".jsonl", ".jsonl.gz")):
        return not _is_window_jsonl(path)
    return True


def load_set(
    name: str,
    path: str,
    tokenizer=None,
    seq_len: int = 128,
    positions: str = "all",
    vocab_size: int | None = None,
    *,
    eos_id: int | None = EOS_REQUIRED,
) -> ExampleSet:
    """Read a set from a file (see module docstring); errors name the set and file (and line).
    Text needs `eos_id` (the model's end-of-text id, or None; `kfac_mem.data.load_windows`)."""
    from kfac_mem.data import load_windows

    check_name(name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`sets` entry {name}={path}: no such file or directory.")
    if path.endswith((".jsonl", ".jsonl.gz")) and _is_window_jsonl(path):
        rows = read_memorized(path, vocab_size=vocab_size)
        return from_rows(name, rows, positions, vocab_size, os.path.abspath(path))
    if path.endswith(".npy"):
        return from_tokens(
            name, np.load(path, allow_pickle=False), vocab_size, os.path.abspath(path)
        )
    if tokenizer is None:
        raise ValueError(
            f"`sets` entry {name}={path} is text, but the model has no tokenizer to cut it into "
            f"windows; give token windows instead (a .npy [N, L] array or a jsonl of mined windows)."
        )
    windows = load_windows([path], seq_len, tokenizer, eos_id=eos_id)
    return from_tokens(name, windows.tokens, vocab_size, os.path.abspath(path), kind="text")


def as_example_set(
    name: str,
    obj: Any,
    tokenizer=None,
    seq_len: int = 128,
    positions: str = "all",
    vocab_size: int | None = None,
    max_examples: int | None = None,
    *,
    eos_id: int | None = EOS_REQUIRED,
) -> ExampleSet:
    """Coerce a path, token array, list of window rows or ExampleSet into an `ExampleSet`
    (a text path needs `eos_id`, see `load_set`)."""
    if isinstance(obj, ExampleSet):
        s = dataclasses.replace(obj, name=check_name(name))
        _check_tokens(name, s.tokens, vocab_size, s.source)
    elif isinstance(obj, str | os.PathLike):
        s = load_set(name, os.fspath(obj), tokenizer, seq_len, positions, vocab_size, eos_id=eos_id)
    elif isinstance(obj, np.ndarray):
        s = from_tokens(name, obj, vocab_size)
    elif isinstance(obj, Sequence):
        s = from_rows(name, obj, positions, vocab_size)
    else:
        raise ValueError(
            f"Set `{name}`: expected a path, a token array [N, L], window rows or an ExampleSet, "
            f"got {type(obj).__name__}."
        )
    if max_examples is not None and len(s) > max_examples:
        s = s.head(max_examples)
    return s


def resolve_sets(
    sets: Mapping[str, Any],
    tokenizer=None,
    vocab_size: int | None = None,
    positions: str = "all",
    seq_len: int | None = None,
    max_examples: int | None = None,
    *,
    eos_id: int | None = EOS_REQUIRED,
) -> dict[str, ExampleSet]:
    """Every set as an `ExampleSet` (order kept). Text sets are cut into windows of `seq_len`, by
    default the length of the first window set (else of the first token set, else 128), so that
    per-example sums over positions compare across sets; documents are joined with `eos_id`
    after each (the model's end-of-text id, or None; docs/design.md §2.10)."""
    if not sets:
        raise ValueError("Give at least one example set (`sets`).")
    text = {
        name
        for name, obj in sets.items()
        if isinstance(obj, str | os.PathLike) and is_text_source(os.fspath(obj))
    }
    loaded: dict[str, ExampleSet] = {}
    for name, obj in sets.items():
        if name not in text:
            loaded[name] = as_example_set(
                name, obj, tokenizer, 2, positions, vocab_size, max_examples
            )
    if seq_len is None:
        by_kind = [s.seq_len for s in loaded.values() if s.kind == "windows"]
        by_kind += [s.seq_len for s in loaded.values()]
        seq_len = by_kind[0] if by_kind else 128
    for name in text:
        loaded[name] = as_example_set(
            name, sets[name], tokenizer, seq_len, positions, vocab_size, max_examples, eos_id=eos_id
        )
    return {name: loaded[name] for name in sets}


def parse_set_flag(text: str) -> tuple[str, str]:
    """`NAME=FILE` -> (name, file)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"`sets` expects NAME=FILE (e.g. memorized=mem.jsonl), got {text!r}.")
    return check_name(name), path
