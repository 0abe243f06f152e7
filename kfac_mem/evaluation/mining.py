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

The quotes protocol (`prefix_len=None`): every document is one candidate window whose suffix is
its last `suffix_len` tokens and whose prefix is all the tokens before them (at most
`max_prefix_len`, the ones nearest the suffix), so prefix lengths vary per row (the paper's quotes:
prefix = all but the last 8 tokens). Mining, deduplication and the split are the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kfac_mem.errors import InputError
from kfac_mem.evaluation.batching import pad_rows, place_batch, round_batch
from kfac_mem.evaluation.ragged import length_groups, pad_right
from kfac_mem.evaluation.scoring import suffix_argmax_matches, suffix_argmax_matches_at
from kfac_mem.evaluation.text import TokenDocument, token_documents


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """Window geometry, deduplication and split (defaults: the paper's 64 / 48 windows).

    `prefix_len=None` selects the quotes protocol (module doc): one window per document, suffix =
    its last `suffix_len` tokens, prefix = the rest (at most `max_prefix_len` tokens); `stride` is
    then unused. `max_prefix_len` applies only there.
    """

    prefix_len: int | None = 64
    suffix_len: int = 48
    stride: int = 32  # distance between consecutive window starts inside a document
    max_jaccard: float = 0.2  # near-duplicate threshold on token n-gram sets
    ngram: int = 5
    val_fraction: float = 0.5
    seed: int = 0
    max_windows: int | None = None  # stop after this many candidate windows
    batch_size: int = 16
    leak_ngram: int = 16  # windows sharing a verbatim n-gram this long stay in one split
    max_prefix_len: int | None = None  # quotes protocol only: longest prefix kept

    def __post_init__(self):
        for name in (
            "prefix_len",
            "suffix_len",
            "stride",
            "ngram",
            "batch_size",
            "leak_ngram",
            "max_prefix_len",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"`{name}` must be >= 1, got {value}.")
        if self.max_prefix_len is not None and self.prefix_len is not None:
            raise InputError(
                "`max_prefix_len` applies to the quotes protocol only (`prefix_len=None`); "
                f"with `prefix_len` {self.prefix_len} every prefix has that length."
            )
        if not 0.0 <= self.max_jaccard <= 1.0:
            raise ValueError(f"`max_jaccard` must be in [0, 1], got {self.max_jaccard}.")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"`val_fraction` must be in [0, 1], got {self.val_fraction}.")

    @property
    def quotes(self) -> bool:
        """Whether prefixes vary per row (the quotes protocol, `prefix_len=None`)."""
        return self.prefix_len is None

    @property
    def window(self) -> int:
        """Window length P + S (fixed geometry only)."""
        if self.prefix_len is None:
            raise InputError("Quotes-protocol windows (`prefix_len=None`) have no fixed length.")
        return self.prefix_len + self.suffix_len


def document_windows(
    docs: Iterable[TokenDocument], cfg: MiningConfig
) -> tuple[list[np.ndarray], list[tuple[str, int, int]]]:
    """The quotes protocol's candidates: one window int32 [P_d + S] per document with more than
    `suffix_len` tokens (its last P_d + S tokens, P_d = min(len − S, `max_prefix_len`)), and
    (source, document index, start token) per window."""
    windows, where = [], []
    for doc in docs:
        if cfg.max_windows is not None and len(windows) >= cfg.max_windows:
            break
        n = int(doc.ids.size)
        if n <= cfg.suffix_len:
            continue
        prefix = n - cfg.suffix_len
        if cfg.max_prefix_len is not None:
            prefix = min(prefix, cfg.max_prefix_len)
        start = n - cfg.suffix_len - prefix
        windows.append(np.asarray(doc.ids[start:], np.int32))
        where.append((doc.source, doc.index, start))
    return windows, where


def candidate_windows(
    docs: Iterable[TokenDocument], cfg: MiningConfig
) -> tuple[np.ndarray | list[np.ndarray], list[tuple[str, int, int]]]:
    """(windows int32 [N, P + S], provenance (source, document index, start token) per window).

    With `cfg.prefix_len=None` (quotes protocol) the windows are `document_windows`: a list of
    int32 arrays of varying lengths."""
    if cfg.quotes:
        return document_windows(docs, cfg)
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
    model,
    windows: np.ndarray | Sequence[np.ndarray],
    prefix_len: int | Sequence[int],
    params=None,
    batch_size: int = 16,
) -> np.ndarray:
    """Teacher-forced argmax hits bool [N, S] of windows int [N, P + S] (see `scoring`).

    Windows of varying lengths (a list of 1-D arrays) take one prefix length per window
    (`prefix_len` int [N]); every suffix must then have the same length S. They are batched by
    length bucket (`ragged.length_groups`), right-padded, so a set compiles one shape per bucket.
    """
    params = model.params if params is None else params
    if np.ndim(prefix_len) == 0 and not isinstance(windows, list):
        windows = np.asarray(windows)
        rows = round_batch(batch_size, model, windows.shape[0])
        out = np.zeros((windows.shape[0], windows.shape[1] - prefix_len), bool)
        for start in range(0, windows.shape[0], rows):
            chunk = windows[start : start + rows]
            hits = suffix_argmax_matches(
                model, params, place_batch(model, pad_rows(chunk, rows)), prefix_len
            )
            out[start : start + len(chunk)] = np.asarray(hits)[: len(chunk)]
        return out
    lengths = np.asarray([len(w) for w in windows], np.int64)
    prefix = np.broadcast_to(np.asarray(prefix_len, np.int64), lengths.shape)
    suffix = lengths - prefix
    if lengths.size == 0:
        return np.zeros((0, 0), bool)
    if (suffix != suffix[0]).any() or suffix[0] < 1 or prefix.min() < 1:
        raise InputError(
            "`windows` with per-row `prefix_len` need one suffix length >= 1 and prefixes >= 1; "
            f"got suffix lengths {sorted(set(suffix.tolist()))}."
        )
    s = int(suffix[0])
    rows = round_batch(batch_size, model, len(windows))
    out = np.zeros((len(windows), s), bool)
    for bucket, idx in length_groups(lengths):
        for start in range(0, idx.size, rows):
            part = idx[start : start + rows]
            tokens = pad_right([windows[i] for i in part], fill=0, width=bucket)
            hits = suffix_argmax_matches_at(
                model,
                params,
                place_batch(model, pad_rows(tokens, rows)),
                place_batch(model, pad_rows(prefix[part].astype(np.int32), rows, fill=1)),
                s,
            )
            out[part] = np.asarray(hits)[: part.size]
    return out


def suffix_recited(
    model, rows: Sequence[dict[str, Any]], params=None, batch_size: int = 16
) -> np.ndarray:
    """bool [N]: whether every suffix token of each memorized row is the teacher-forced argmax
    (= greedy decoding reproduces the suffix). Rows may differ in prefix and suffix lengths."""
    prefix = [list(r["prefix_ids"]) for r in rows]
    suffix = [list(r["suffix_ids"]) for r in rows]
    out = np.zeros(len(rows), bool)
    for s in sorted({len(x) for x in suffix}):
        idx = [i for i in range(len(rows)) if len(suffix[i]) == s]
        windows = [np.asarray(prefix[i] + suffix[i], np.int32) for i in idx]
        lens = [len(prefix[i]) for i in idx]
        if len(set(lens)) == 1:
            hits = suffix_matches(model, np.stack(windows), lens[0], params, batch_size)
        else:
            hits = suffix_matches(model, windows, lens, params, batch_size)
        out[idx] = hits.all(axis=1)
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
    windows: np.ndarray | Sequence[np.ndarray],
    provenance: Sequence[tuple[str, int, int]],
    cfg: MiningConfig = MiningConfig(),
    params=None,
) -> dict[str, Any]:
    """Memorized, deduplicated, split windows among candidate `windows` [N, P + S] (with
    `cfg.prefix_len=None`: a list of 1-D windows of any lengths > S, prefix = all but the last S).

    Returns:
      {"train": rows, "validation": rows, "stats": counts}; a row has `prefix_ids`, `suffix_ids`,
      decoded `prefix_text`/`suffix_text` (when the model has a tokenizer), `corpus`, `doc_index`,
      `start` (token offset in the document) and `split`.
    """
    if cfg.quotes:
        windows = [np.asarray(w, np.int32).reshape(-1) for w in windows]
        short = [i for i, w in enumerate(windows) if w.size <= cfg.suffix_len]
        if short:
            raise InputError(
                f"`windows[{short[0]}]` has {windows[short[0]].size} tokens; the quotes protocol "
                f"needs more than `suffix_len` {cfg.suffix_len} (at least one prefix token)."
            )
        prefix_lens = np.asarray([w.size - cfg.suffix_len for w in windows], np.int64)
        hits = (
            suffix_matches(model, windows, prefix_lens, params, cfg.batch_size)
            if windows
            else np.zeros((0, cfg.suffix_len), bool)
        )
    else:
        windows = np.asarray(windows, np.int32)
        if windows.ndim != 2 or windows.shape[1] != cfg.window:
            raise InputError(
                f"`windows` must be [N, {cfg.window}] (prefix {cfg.prefix_len} + suffix "
                f"{cfg.suffix_len}), got {windows.shape}."
            )
        prefix_lens = np.full(windows.shape[0], cfg.prefix_len, np.int64)
        hits = suffix_matches(model, windows, cfg.prefix_len, params, cfg.batch_size)
    memorized = np.flatnonzero(hits.all(axis=1))
    kept = [
        int(memorized[i])
        for i in drop_near_duplicates([windows[i] for i in memorized], cfg.max_jaccard, cfg.ngram)
    ]
    documents = [provenance[i][:2] for i in kept]  # (source, document index)
    train, val = split_by_document(
        [windows[i] for i in kept], documents, cfg.val_fraction, cfg.seed, cfg.leak_ngram
    )
    tok = model.tokenizer

    def row(i: int, split: str) -> dict[str, Any]:
        w, p_len = windows[i], int(prefix_lens[i])
        p, s = w[:p_len].tolist(), w[p_len:].tolist()
        source, doc, start = provenance[i]
        out: dict[str, Any] = {"prefix_ids": p, "suffix_ids": s}
        if tok is not None:
            out["prefix_text"] = tok.decode(p, skip_special_tokens=False)
            out["suffix_text"] = tok.decode(s, skip_special_tokens=False)
        out.update(corpus=source, doc_index=doc, start=start, split=split)
        return out

    kept_prefix = prefix_lens[kept] if kept else np.zeros(0, np.int64)
    stats = {
        "candidates": len(windows),
        "memorized": int(memorized.size),
        "after_dedup": len(kept),
        "train": int(train.size),
        "validation": int(val.size),
        "split_unit": f"document (and shared {cfg.leak_ngram}-grams)",
        "documents_train": len({documents[j] for j in train}),
        "documents_validation": len({documents[j] for j in val}),
        "mean_suffix_match": float(hits.mean()) if hits.size else 0.0,
        "protocol": "quotes" if cfg.quotes else "fixed",
        "prefix_lengths": {
            "min": int(kept_prefix.min()) if kept_prefix.size else None,
            "mean": float(kept_prefix.mean()) if kept_prefix.size else None,
            "max": int(kept_prefix.max()) if kept_prefix.size else None,
        },
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
    if len(windows) == 0:
        need = (
            f"more than {cfg.suffix_len} tokens (suffix {cfg.suffix_len} + a prefix)"
            if cfg.quotes
            else f"{cfg.window} tokens (prefix {cfg.prefix_len} + suffix {cfg.suffix_len})"
        )
        raise InputError(
            f"No document in {list(sources)} has {need}; use longer texts or shorter windows."
        )
    return mine_windows(model, windows, provenance, cfg, params)
