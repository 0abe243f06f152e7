"""Memorized sets whose rows differ in length: the quotes protocol (docs/design.md §3, §5.6).

A memorized row is {`prefix_ids`, `suffix_ids`}; the lengths may vary from row to row (e.g. the
paper's quotes: prefix = all but the last 8 tokens of each quote, suffix = 8). Every reader of
memorized sets goes through these helpers:

* `row_lengths(rows)`: prefix and suffix lengths int [N] each; `common_lengths` the (P, S) shared
  by every row, or None.
* `pad_right(seqs)`: ragged token lists -> int32 [N, W] right-padded with `PAD` (−1), the
  convention `kfac_mem.training.next_token_loss` reads as "no token here".
* `length_groups(lengths)`: rows grouped by the bucket of their length (`batching.length_bucket`),
  so a mixed set compiles one shape per bucket, never one per row.
* `greedy_continuations(model, prompts, lengths)`: batched greedy decoding (KV cache) of prompts of
  any lengths, one compiled shape per prompt-length bucket; row i gets `lengths[i]` tokens. A
  row's continuation is the one it gets alone: prompts are left-padded (masked out of attention,
  positions count real tokens only) and greedy decoding is causal, so a longer run only appends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kfac_mem.evaluation.batching import length_bucket, round_batch

PAD = -1  # right padding of ragged token arrays ("no token"); never a valid token id

__all__ = [
    "PAD",
    "common_lengths",
    "greedy_continuations",
    "length_groups",
    "pad_right",
    "row_lengths",
]


def row_lengths(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(prefix lengths int64 [N], suffix lengths int64 [N]) of memorized rows."""
    prefix = np.asarray([len(r["prefix_ids"]) for r in rows], np.int64)
    suffix = np.asarray([len(r["suffix_ids"]) for r in rows], np.int64)
    return prefix, suffix


def common_lengths(rows: Sequence[Mapping[str, Any]]) -> tuple[int, int] | None:
    """(P, S) when every row has prefix length P and suffix length S, else None (also for [])."""
    if not rows:
        return None
    prefix, suffix = row_lengths(rows)
    if (prefix == prefix[0]).all() and (suffix == suffix[0]).all():
        return int(prefix[0]), int(suffix[0])
    return None


def pad_right(
    seqs: Sequence[Sequence[int]], fill: int = PAD, width: int | None = None
) -> np.ndarray:
    """Token lists -> int32 [N, W] (W = `width` or the longest list), right-padded with `fill`."""
    w = max((len(s) for s in seqs), default=0) if width is None else width
    out = np.full((len(seqs), w), fill, np.int32)
    for i, s in enumerate(seqs):
        if len(s) > w:
            raise ValueError(f"Row {i} has {len(s)} tokens, more than `width` {w}.")
        out[i, : len(s)] = s
    return out


def length_groups(lengths: Sequence[int], minimum: int = 16) -> list[tuple[int, np.ndarray]]:
    """[(bucket, row indices int64 [n_b])] grouping rows by `length_bucket(length, minimum)`,
    buckets ascending, indices ascending within a bucket."""
    lengths = np.asarray(lengths, np.int64)
    buckets = np.asarray([length_bucket(int(n), minimum) for n in lengths], np.int64)
    return [(int(b), np.flatnonzero(buckets == b)) for b in np.unique(buckets)]


def greedy_continuations(
    model,
    prompts: Sequence[Sequence[int]],
    lengths: Sequence[int] | int,
    params=None,
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy continuation of every prompt, row i `lengths[i]` tokens long (see module doc).

    Args:
      model: a `models.LanguageModel`; params: weights to use instead of `model.params`.
      prompts: N token lists of any lengths (≥ 1). lengths: tokens to generate per row (or one
        number for all).
      batch_size: rows per decoding batch, rounded up to a multiple of the data-parallel size;
        the same row count for every bucket (one compiled shape per prompt-length bucket and
        continuation length).
    """
    from models import greedy_generate

    n = len(prompts)
    want = np.full(n, lengths, np.int64) if np.isscalar(lengths) else np.asarray(lengths, np.int64)
    if want.shape != (n,) or (n and want.min() < 1):
        raise ValueError(f"`lengths` needs one count >= 1 per prompt ({n}), got {want.tolist()}.")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token.")
    rows = round_batch(batch_size, model, n)
    out: list[list[int]] = [[] for _ in range(n)]
    for bucket, idx in length_groups([len(p) for p in prompts]):
        gen = greedy_generate(
            model,
            [list(map(int, prompts[i])) for i in idx],
            int(want[idx].max()),
            params=params,
            batch_size=rows,
            bucket=bucket,
        )
        for j, i in enumerate(idx):
            out[i] = gen[j, : want[i]].tolist()
    return out
