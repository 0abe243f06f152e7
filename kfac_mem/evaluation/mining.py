"""Mining memorized windows the paper's way (docs/design.md §3).

Candidate windows [prefix P | suffix S] are cut from each tokenized document every `stride` tokens
(never across documents). A window is memorized when, teacher-forced on the true tokens, the
model's argmax prediction equals every suffix token. Near-duplicates are then dropped greedily in
corpus order (a window is dropped when the Jaccard similarity of its token n-gram set with an
already kept window exceeds `max_jaccard`), and the rest is split into train and validation by
*document*: windows of one source document, and windows that share a verbatim `leak_ngram`-gram
(16 tokens by default) even across documents, form one group, and a seeded permutation of the
groups fills the validation split. So no document and no 16-gram is in both splits, and a
held-out window is never a shifted copy of a training one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kfac_mem.evaluation.batching import pad_rows, place_batch, round_batch
from kfac_mem.evaluation.scoring import suffix_argmax_matches
from kfac_mem.evaluation.text import TokenDocument, token_documents


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """Window geometry, deduplication and split (defaults: the paper's 64 / 48 windows)."""

    prefix_len: int = 64
    suffix_len: int = 48
    stride: int = 32  # distance between consecutive window starts inside a document
    max_jaccard: float = 0.2  # near-duplicate threshold on token n-gram sets
    ngram: int = 5
    val_fraction: float = 0.5
    seed: int = 0
    max_windows: int | None = None  # stop after this many candidate windows
    batch_size: int = 16
    leak_ngram: int = 16  # windows sharing a verbatim n-gram this long stay in one split

    def __post_init__(self):
        for name in ("prefix_len", "suffix_len", "stride", "ngram", "batch_size", "leak_ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not 0.0 <= self.max_jaccard <= 1.0:
            raise ValueError(f"`max_jaccard` must be in [0, 1], got {self.max_jaccard}.")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"`val_fraction` must be in [0, 1], got {self.val_fraction}.")

    @property
    def window(self) -> int:
        return self.prefix_len + self.suffix_len


def candidate_windows(
    docs: Iterable[TokenDocument], cfg: MiningConfig
) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """(windows int32 [N, P + S], provenance (source, document index, start token) per window)."""
    windows, where = [], []
    for doc in docs:
        for start in range(0, doc.ids.size - cfg.window + 1, cfg.stride):
            if cfg.max_windows is not None and len(windows) >= cfg.max_windows:
                break
            windows.append(doc.ids[start : start + cfg.window])
            where.append((doc.source, doc.index, start))
        if cfg.max_windows is not None and len(windows) >= cfg.max_windows:
            break
    if not windows:
        return np.zeros((0, cfg.window), np.int32), []
    return np.stack(windows).astype(np.int32), where


def suffix_matches(
    model, windows: np.ndarray, prefix_len: int, params=None, batch_size: int = 16
) -> np.ndarray:
    """Teacher-forced argmax hits bool [N, S] of windows int [N, P + S] (see `scoring`)."""
    params = model.params if params is None else params
    rows = round_batch(batch_size, model, windows.shape[0])
    out = np.zeros((windows.shape[0], windows.shape[1] - prefix_len), bool)
    for start in range(0, windows.shape[0], rows):
        chunk = windows[start : start + rows]
        hits = suffix_argmax_matches(
            model, params, place_batch(model, pad_rows(chunk, rows)), prefix_len
        )
        out[start : start + len(chunk)] = np.asarray(hits)[: len(chunk)]
    return out


def _ngrams(ids: np.ndarray, n: int) -> set[tuple[int, ...]]:
    n = min(n, ids.size)
    return {tuple(ids[i : i + n].tolist()) for i in range(ids.size - n + 1)}


def drop_near_duplicates(
    windows: Sequence[np.ndarray], max_jaccard: float, n: int = 5
) -> list[int]:
    """Indices of the windows kept by greedy near-duplicate removal, in input order.

    A window is kept unless the Jaccard similarity of its n-gram set with a kept window exceeds
    `max_jaccard` (exact duplicates have similarity 1 and are always dropped).
    """
    kept: list[int] = []
    kept_sizes: list[int] = []
    index: dict[tuple[int, ...], list[int]] = {}
    for i, w in enumerate(windows):
        grams = _ngrams(np.asarray(w), n)
        shared: dict[int, int] = {}
        for g in grams:
            for k in index.get(g, ()):
                shared[k] = shared.get(k, 0) + 1
        if any(s / (len(grams) + kept_sizes[k] - s) > max_jaccard for k, s in shared.items()):
            continue
        slot = len(kept)
        kept.append(i)
        kept_sizes.append(len(grams))
        for g in grams:
            index.setdefault(g, []).append(slot)
    return kept


def split_groups(
    windows: Sequence[np.ndarray], documents: Sequence[Any], ngram: int = 16
) -> np.ndarray:
    """Group label int [N] per window: windows of one document, or sharing a verbatim `ngram`-gram,
    are in one group (union-find, transitively). Labels are 0..G-1 in order of first window."""
    parent = list(range(len(windows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first: dict[Any, int] = {}
    for i, (w, doc) in enumerate(zip(windows, documents)):
        union(i, first.setdefault(("doc", doc), i))
        for g in _ngrams(np.asarray(w), ngram):
            union(i, first.setdefault(g, i))
    roots = [find(i) for i in range(len(windows))]
    labels: dict[int, int] = {}
    return np.asarray([labels.setdefault(r, len(labels)) for r in roots], np.int64)


def split_by_document(
    windows: Sequence[np.ndarray],
    documents: Sequence[Any],
    val_fraction: float,
    seed: int,
    ngram: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions 0..N-1 with whole groups (`split_groups`) on one side.

    A seeded permutation of the groups is walked and groups go to validation until it holds at
    least round(N · val_fraction) windows (it may exceed that by less than one group).
    """
    n = len(windows)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    labels = split_groups(windows, documents, ngram)
    target = round(n * val_fraction)
    members = [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]
    val: list[int] = []
    for g in np.random.default_rng(seed).permutation(len(members)):
        if len(val) >= target:
            break
        val.extend(members[g].tolist())
    in_val = np.zeros(n, bool)
    in_val[val] = True
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def mine_windows(
    model,
    windows: np.ndarray,
    provenance: Sequence[tuple[str, int, int]],
    cfg: MiningConfig = MiningConfig(),
    params=None,
) -> dict[str, Any]:
    """Memorized, deduplicated, split windows among candidate `windows` [N, P + S].

    Returns:
      {"train": rows, "validation": rows, "stats": counts}; a row has `prefix_ids`, `suffix_ids`,
      decoded `prefix_text`/`suffix_text` (when the model has a tokenizer), `corpus`, `doc_index`,
      `start` (token offset in the document) and `split`.
    """
    windows = np.asarray(windows, np.int32)
    if windows.ndim != 2 or windows.shape[1] != cfg.window:
        raise ValueError(
            f"`windows` must be [N, {cfg.window}] (prefix {cfg.prefix_len} + suffix "
            f"{cfg.suffix_len}), got {windows.shape}."
        )
    hits = suffix_matches(model, windows, cfg.prefix_len, params, cfg.batch_size)
    memorized = np.flatnonzero(hits.all(axis=1))
    kept = [
        int(memorized[i])
        for i in drop_near_duplicates(windows[memorized], cfg.max_jaccard, cfg.ngram)
    ]
    documents = [provenance[i][:2] for i in kept]  # (source, document index)
    train, val = split_by_document(
        windows[kept], documents, cfg.val_fraction, cfg.seed, cfg.leak_ngram
    )
    tok = model.tokenizer

    def row(i: int, split: str) -> dict[str, Any]:
        p, s = windows[i, : cfg.prefix_len].tolist(), windows[i, cfg.prefix_len :].tolist()
        source, doc, start = provenance[i]
        out: dict[str, Any] = {"prefix_ids": p, "suffix_ids": s}
        if tok is not None:
            out["prefix_text"] = tok.decode(p, skip_special_tokens=False)
            out["suffix_text"] = tok.decode(s, skip_special_tokens=False)
        out.update(corpus=source, doc_index=doc, start=start, split=split)
        return out

    stats = {
        "candidates": int(windows.shape[0]),
        "memorized": int(memorized.size),
        "after_dedup": len(kept),
        "train": int(train.size),
        "validation": int(val.size),
        "split_unit": f"document (and shared {cfg.leak_ngram}-grams)",
        "documents_train": len({documents[j] for j in train}),
        "documents_validation": len({documents[j] for j in val}),
        "mean_suffix_match": float(hits.mean()) if hits.size else 0.0,
        **dataclasses.asdict(cfg),
    }
    return {
        "train": [row(kept[j], "train") for j in train],
        "validation": [row(kept[j], "validation") for j in val],
        "stats": stats,
    }


def mine(
    model,
    sources: Sequence[str],
    cfg: MiningConfig = MiningConfig(),
    params=None,
    text_field: str = "text",
) -> dict[str, Any]:
    """Mine memorized windows from text sources (see `text.py`) with the model's tokenizer."""

    def docs():
        for source in sources:
            yield from token_documents(source, model.tokenizer, text_field, model.config.vocab_size)

    windows, provenance = candidate_windows(docs(), cfg)
    if windows.shape[0] == 0:
        raise ValueError(
            f"No document in {list(sources)} has {cfg.window} tokens (prefix "
            f"{cfg.prefix_len} + suffix {cfg.suffix_len}); use longer texts or "
            f"shorter windows."
        )
    return mine_windows(model, windows, provenance, cfg, params)
