"""Token-level Levenshtein distance and the strict / loose recitation criteria (docs/design.md §3).

d = edit distance with unit costs (insert, delete, substitute) between the generated and the true
suffix token sequences; L = |true suffix|. strict: d = 0. loose: 1 − d/L ≥ 0.75.
The distance is rapidfuzz's (C++, bit-parallel), which takes sequences of hashable items: token
ids are compared as Python integers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

LOOSE_THRESHOLD = 0.75


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Unit-cost edit distance between two token sequences.

    Args:
      a, b: token ids (any integer sequences or arrays, lengths n and m; flattened).

    Returns:
      The minimum number of single-token insertions, deletions and substitutions turning a into b.
    """
    a = np.asarray(a, np.int64).reshape(-1).tolist()
    b = np.asarray(b, np.int64).reshape(-1).tolist()
    return int(Levenshtein.distance(a, b))


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
