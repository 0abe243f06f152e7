"""Reading memorized-window jsonl files (errors name file and line) and atomic result writing."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from kfac_mem.errors import InputError
from kfac_mem.validation import check_token_ids

WINDOW_FIELDS = ("prefix_ids", "suffix_ids")


def open_text(path: str):
    """Open a text file for reading, transparently gunzipping `*.gz`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file.")
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.endswith(".gz")
        else open(path, encoding="utf-8")
    )


def iter_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every non-blank line of a (gzipped) jsonl file."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object."
                ) from None
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}."
                )
            yield lineno, obj


def _token_list(
    path: str, lineno: int, field: str, value: Any, vocab_size: int | None
) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"{path}:{lineno}: `{field}` must be a non-empty list of token ids, got "
            f"{type(value).__name__}{'' if value else ' (empty)'}."
        )
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ValueError(f"{path}:{lineno}: `{field}` must contain only integers.")
    check_token_ids(np.asarray(value, np.int64), vocab_size, f"{path}:{lineno}: `{field}`")
    return value


def read_memorized(
    path: str,
    prefix_len: int | None = None,
    suffix_len: int | None = None,
    vocab_size: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of a memorized-window file: jsonl with `prefix_ids` and `suffix_ids` (token id lists).

    Rows may differ in prefix and suffix length (the quotes protocol, docs/design.md §3, §5.6);
    `prefix_len` / `suffix_len`, when given, require that length of every row. Other fields (text,
    provenance) are kept as they are; `line` (the 1-based line number) is added.

    Raises:
      InputError naming the file and line of the first row with a missing field, a non-integer or
      out-of-vocabulary id, an empty list, or a length other than the required one.
    """
    rows: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl(path):
        missing = [f for f in WINDOW_FIELDS if f not in obj]
        if missing:
            raise InputError(
                f"{path}:{lineno}: missing field(s) {missing}; every row needs "
                f"`prefix_ids` and `suffix_ids` (lists of token ids)."
            )
        prefix = _token_list(path, lineno, "prefix_ids", obj["prefix_ids"], vocab_size)
        suffix = _token_list(path, lineno, "suffix_ids", obj["suffix_ids"], vocab_size)
        for name, got, want in (
            ("prefix_len", len(prefix), prefix_len),
            ("suffix_len", len(suffix), suffix_len),
        ):
            if want is not None and got != want:
                raise InputError(
                    f"{path}:{lineno}: window of the wrong length: {name.split('_')[0]} of {got} "
                    f"tokens, but `{name}` requires {want}; drop or re-mine this row."
                )
        rows.append({**obj, "line": lineno})
    if not rows:
        raise InputError(f"{path}: no rows; a memorized-window file needs at least one jsonl row.")
    return rows
