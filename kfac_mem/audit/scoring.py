"""Scoring of candidate continuations against the true suffix, shared by every extraction attack.

For a candidate c and the true suffix s (L = |s| tokens): exact = (c = s); loose = token-level
normalized Levenshtein d/L ≤ 0.25 (`kfac_mem.evaluation.recitation_match`, the project's loose
criterion); match = the length of the leading run of c equal to s (0..L,
`kfac_mem.baselines.stress.exact_match_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kfac_mem.baselines.stress import exact_match_length
from kfac_mem.evaluation.batching import length_bucket, round_batch
from kfac_mem.evaluation.levenshtein import recitation_match
from kfac_mem.stats import bootstrap_mean, proportion


def score_candidates(candidates: np.ndarray, suffixes: np.ndarray) -> dict[str, np.ndarray]:
    """Candidates int [N, C, S'] (S' ≥ S) against suffixes [N, S] -> exact, loose bool [N, C],
    distance (d/L) float [N, C] and match int [N, C]."""
    n, c = candidates.shape[:2]
    s = suffixes.shape[1]
    cand = np.asarray(candidates)[:, :, :s]
    exact = (cand == suffixes[:, None]).all(-1)
    dist = np.zeros((n, c))
    loose = np.zeros((n, c), bool)
    for i in range(n):
        for j in range(c):
            if exact[i, j]:
                loose[i, j] = True
                continue
            _, dist[i, j], _, loose[i, j] = recitation_match(
                cand[i, j].tolist(), suffixes[i].tolist()
            )
    match = exact_match_length(cand.reshape(n * c, s), np.repeat(suffixes, c, 0)).reshape(n, c)
    return {"exact": exact, "loose": loose, "distance": dist, "match": match}


def greedy_scores(
    model, params, prompts: Sequence[Sequence[int]], suffixes: np.ndarray, batch_size: int
):
    """`score_candidates` of the greedy continuation of each prompt ([N, 1] arrays)."""
    from models import greedy_generate

    gen = greedy_generate(
        model,
        [list(map(int, p)) for p in prompts],
        suffixes.shape[1],
        params=params,
        batch_size=round_batch(batch_size, model, len(prompts)),
        bucket=length_bucket(max(len(p) for p in prompts)),
    )
    return score_candidates(gen[:, None], suffixes)


def rate_block(
    exact: np.ndarray, loose: np.ndarray, match: np.ndarray, suffix_len: int, seed: int
) -> dict[str, Any]:
    """Aggregates of per-example outcomes [N]: exact / loose proportions (Wilson) and the mean
    longest match in tokens and as a share of the suffix (bootstrap)."""
    return {
        "exact": proportion(np.asarray(exact, bool)),
        "loose": proportion(np.asarray(loose, bool)),
        "longest_match": bootstrap_mean(np.asarray(match, float), seed),
        "longest_match_share": bootstrap_mean(np.asarray(match, float) / suffix_len, seed),
    }
