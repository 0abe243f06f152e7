"""Scoring of candidate continuations against the true suffix, shared by every extraction attack.

Suffix lengths may vary per row (the quotes protocol, docs/design.md §3); each row is scored on its
own. For a candidate c and the true suffix s (L = |s| tokens): exact = (c = s); loose = token-level
normalized Levenshtein d/L ≤ 0.25 (`kfac_mem.evaluation.recitation_match`, the project's loose
criterion); match = the length of the leading run of c equal to s (0..L,
`kfac_mem.baselines.stress.exact_match_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kfac_mem.baselines.stress import exact_match_length
from kfac_mem.evaluation.levenshtein import recitation_match
from kfac_mem.evaluation.ragged import greedy_continuations, pad_right
from kfac_mem.stats import bootstrap_mean, proportion


def score_candidates(
    candidates: np.ndarray, suffixes: np.ndarray | Sequence[Sequence[int]]
) -> dict[str, np.ndarray]:
    """Candidates int [N, C, S'] against suffixes [N, S] (or N token lists of lengths S_i ≤ S',
    the quotes protocol: row i is scored on its first S_i candidate tokens) -> exact, loose bool
    [N, C], distance (d/L) float [N, C] and match int [N, C]."""
    candidates = np.asarray(candidates)
    n, c = candidates.shape[:2]
    targets = [np.asarray(x) for x in suffixes]
    exact = np.zeros((n, c), bool)
    dist = np.zeros((n, c))
    loose = np.zeros((n, c), bool)
    match = np.zeros((n, c), np.int64)
    for i, target in enumerate(targets):
        cand = candidates[i, :, : target.size]
        exact[i] = (cand == target[None]).all(-1)
        match[i] = exact_match_length(cand, np.broadcast_to(target, cand.shape))
        for j in range(c):
            if exact[i, j]:
                loose[i, j] = True
                continue
            _, dist[i, j], _, loose[i, j] = recitation_match(cand[j].tolist(), target.tolist())
    return {"exact": exact, "loose": loose, "distance": dist, "match": match}


def suffix_lengths(suffixes: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Length of each row's suffix, int64 [N]."""
    return np.asarray([len(x) for x in suffixes], np.int64)


def span(lengths: Sequence[int]) -> int | str:
    """A length shared by every row (int), or "min-max" when rows differ (quotes protocol)."""
    lengths = np.asarray(lengths)
    lo, hi = int(lengths.min()), int(lengths.max())
    return lo if lo == hi else f"{lo}-{hi}"


def greedy_scores(
    model,
    params,
    prompts: Sequence[Sequence[int]],
    suffixes: np.ndarray | Sequence[Sequence[int]],
    batch_size: int,
) -> dict[str, np.ndarray]:
    """`score_candidates` of the greedy continuation of each prompt ([N, 1] arrays); row i
    generates as many tokens as its suffix has (`ragged.greedy_continuations`)."""
    gen = greedy_continuations(model, prompts, suffix_lengths(suffixes), params, batch_size)
    return score_candidates(pad_right(gen)[:, None], suffixes)


def rate_block(
    exact: np.ndarray,
    loose: np.ndarray,
    match: np.ndarray,
    suffix_len: int | np.ndarray,
    seed: int,
) -> dict[str, Any]:
    """Aggregates of per-example outcomes [N]: exact / loose proportions (Wilson) and the mean
    longest match in tokens and as a share of the suffix (bootstrap); `suffix_len` is one
    length or each row's own (int [N])."""
    return {
        "exact": proportion(np.asarray(exact, bool)),
        "loose": proportion(np.asarray(loose, bool)),
        "longest_match": bootstrap_mean(np.asarray(match, float), seed),
        "longest_match_share": bootstrap_mean(np.asarray(match, float) / suffix_len, seed),
    }
