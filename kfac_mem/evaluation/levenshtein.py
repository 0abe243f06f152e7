"""Token-level Levenshtein distance and the strict / loose recitation criteria (DESIGN.md §2).

d = edit distance with unit costs (insert, delete, substitute) between the generated and the true
suffix token sequences; L = |true suffix|. strict: d = 0. loose: 1 − d/L ≥ 0.75.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LOOSE_THRESHOLD = 0.75


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Unit-cost edit distance between two token sequences.

    One DP row at a time; the substitution/deletion part of a row is vectorized with numpy and the
    insertion chain (a running minimum along the row) is resolved with `np.minimum.accumulate`.

    Args:
      a, b: token ids (any integer sequences, lengths n and m).

    Returns:
      The minimum number of single-token insertions, deletions and substitutions turning a into b.
    """
    a = np.asarray(a, np.int64).reshape(-1)
    b = np.asarray(b, np.int64).reshape(-1)
    if a.size == 0 or b.size == 0:
        return int(max(a.size, b.size))
    cols = np.arange(b.size + 1, dtype=np.int64)
    prev = cols.copy()
    for i in range(1, a.size + 1):
        # Without insertions: cur[j] = min(prev[j] + 1, prev[j-1] + (a_i != b_j)), cur[0] = i.
        cur = np.empty_like(prev)
        cur[0] = i
        cur[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (a[i - 1] != b))
        # Insertions: cur[j] = min_k<=j (cur[k] + j - k)  ==  j + cummin(cur[k] - k).
        cur = np.minimum.accumulate(cur - cols) + cols
        prev = cur
    return int(prev[-1])


def recitation_match(
    generated: Sequence[int], target: Sequence[int]
) -> tuple[int, float, bool, bool]:
    """(d, d/L, strict, loose) of a generated suffix against the true one (L = len(target) > 0)."""
    length = len(target)
    if length == 0:
        raise ValueError("The true suffix is empty: recitation needs at least one suffix token.")
    d = levenshtein(generated, target)
    norm = d / length
    return d, norm, d == 0, (1.0 - norm) >= LOOSE_THRESHOLD
