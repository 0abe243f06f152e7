"""Prefix attacks: greedy recitation from altered prompts.

Variants of the prompt P (|P| tokens) of every row, each decoded greedily for |S| tokens:
  * `full`: P itself (plain greedy recitation, the reference);
  * `last{n}`: the last n tokens of P (n < |P|), a shorter context ending at the same token;
  * `drop{t}` / `prepend{t}`: `kfac_mem.baselines.stress.shifted_prompts` (first t tokens
    removed / t held-out clean tokens put in front);
  * `dropout{p}`: every prefix token deleted independently with probability p (one seeded draw
    per row; the last token is always kept so the continuation point is unchanged).
An example counts as extracted by the family if any of its variants reproduces the suffix.

Prefixes may differ in length (the quotes protocol): `last{n}` is used when n is shorter than the
longest prefix (a prefix of ≤ n tokens is its own last n), `drop{t}` only when it leaves every
row at least one token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kfac_mem.audit.options import AuditOptions
from kfac_mem.audit.scoring import greedy_scores, rate_block, suffix_lengths
from kfac_mem.baselines.stress import shifted_prompts


def dropout_prompts(
    prefixes: np.ndarray | Sequence[Sequence[int]], rate: float, seed: int
) -> list[list[int]]:
    """Each prefix with its tokens deleted with probability `rate` (its last token kept). One
    draw [N, max P] per (seed, rate); row i uses its first P_i draws."""
    rows = [np.asarray(p) for p in prefixes]
    width = max(p.size for p in rows)
    rng = np.random.default_rng((seed, int(np.rint(rate * 1e6))))
    draws = rng.random((len(rows), width)) >= rate
    out = []
    for p, k in zip(rows, draws):
        keep = k[: p.size].copy()
        keep[-1] = True
        out.append(list(map(int, p[keep])))
    return out


def prompt_variants(
    prefixes: np.ndarray | Sequence[Sequence[int]], options: AuditOptions, filler: list[int]
) -> dict[str, list[list[int]]]:
    """{variant name: prompts} (see module doc)."""
    rows = [{"prefix_ids": list(map(int, p))} for p in prefixes]
    shortest = min(len(r["prefix_ids"]) for r in rows)
    longest = max(len(r["prefix_ids"]) for r in rows)
    out = {"full": [r["prefix_ids"] for r in rows]}
    for n in options.prefix_lengths:
        if n < longest:
            out[f"last{n}"] = [r["prefix_ids"][-n:] for r in rows]
    for mode in options.shift_modes:
        for t in options.shifts:
            if mode == "drop" and t >= shortest:
                continue
            if mode == "prepend" and len(filler) < t:
                continue
            out[f"{mode}{t}"] = shifted_prompts(rows, t, mode, filler)
    for p in options.dropout:
        out[f"dropout{p:g}"] = dropout_prompts(prefixes, p, options.seed)
    return out


def family(name: str) -> str:
    for f in ("full", "last", "drop", "prepend", "dropout"):
        if name.startswith(f) and not (f == "drop" and name.startswith("dropout")):
            return f
    raise ValueError(name)


def prefix_attacks(
    model,
    params,
    prefixes: Sequence[Sequence[int]],  # N prompts (lengths may differ)
    suffixes: Sequence[Sequence[int]],  # N suffixes (lengths may differ)
    options: AuditOptions,
    filler: list[int],
    progress=None,
) -> dict[str, Any]:
    """Per variant and per family (union of its variants), and over all altered prompts: exact /
    loose rates and longest match. Cost: one greedy decode (|S| decoder calls) per variant."""
    n = len(suffixes)
    s = suffix_lengths(suffixes)
    variants = prompt_variants(prefixes, options, filler)
    scores = {}
    for name, prompts in variants.items():
        scores[name] = greedy_scores(model, params, prompts, suffixes, options.batch_size)
        if progress is not None:
            progress.update(1)
    ex = {k: v["exact"][:, 0] for k, v in scores.items()}
    lo = {k: v["loose"][:, 0] for k, v in scores.items()}
    ma = {k: v["match"][:, 0] for k, v in scores.items()}

    def union(names):
        return (
            np.any([ex[k] for k in names], 0),
            np.any([lo[k] for k in names], 0),
            np.max([ma[k] for k in names], 0),
        )

    families: dict[str, list[str]] = {}
    for name in variants:
        families.setdefault(family(name), []).append(name)
    altered = [k for k in variants if k != "full"]
    out = {
        "n": n,
        "variants": {k: rate_block(ex[k], lo[k], ma[k], s, options.seed) for k in variants},
        "families": {f: rate_block(*union(ks), s, options.seed) for f, ks in families.items()},
        "decoder_calls_per_example": len(variants) * int(s.max()),
        "examples": [
            {
                "exact_variants": [k for k in variants if ex[k][i]],
                "loose_variants": [k for k in variants if lo[k][i]],
                "longest_match": int(max(ma[k][i] for k in variants)),
            }
            for i in range(n)
        ],
    }
    if altered:
        out["any_altered"] = rate_block(*union(altered), s, options.seed)
    return out
