"""Sampling extraction: k seeded samples per prefix at each temperature; is the suffix among them?

For each temperature T the prompts are repeated k times (samples are a batch dimension) and each
(row i, sample j) draws from its own key (seeded by `seed`, T's index, the set's index and
i·k + j), so results do not depend on batching or devices. An example is extracted at k' ≤ k if
any of its first k' samples equals the suffix (exact) or is within the loose threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kfac_mem.audit.options import AuditOptions
from kfac_mem.audit.scoring import rate_block, score_candidates, suffix_lengths
from kfac_mem.evaluation.batching import length_bucket, round_batch
from kfac_mem.stats import proportion


def sample_seeds(seed: int, temperature_index: int, set_index: int, count: int) -> np.ndarray:
    """`count` uint32 row seeds for one (seed, temperature, set)."""
    return np.random.SeedSequence((seed, temperature_index, set_index)).generate_state(count)


def sampling_extraction(
    model,
    params,
    prefixes: Sequence[Sequence[int]],  # N prompts (lengths may differ)
    suffixes: Sequence[Sequence[int]],  # N suffixes (lengths may differ)
    options: AuditOptions,
    set_index: int = 0,
    progress=None,
) -> dict[str, Any]:
    """Per temperature: the extraction curve over `options.curve`, the longest exact match, and
    per example (any exact / loose among k, best d/L, longest match, first exact sample).

    Rows of different lengths are left-padded into one batch shape (`models.sample_generate`);
    every row samples max |S| tokens and is scored on its first |S_i| (a sample's first tokens
    do not depend on how many follow).

    Cost: k sequences of |S| decoder calls (1 prefill + |S| − 1 cached steps) per example and T.
    """
    from models import sample_generate

    n = len(suffixes)
    lens = suffix_lengths(suffixes)
    s = int(lens.max())
    k = options.samples
    prompts = [list(map(int, p)) for p in prefixes for _ in range(k)]
    out: dict[str, Any] = {"n": n, "samples": k, "top_k": options.top_k, "top_p": options.top_p}
    per_t = {}
    for ti, t in enumerate(options.temperatures):
        gen = sample_generate(
            model,
            prompts,
            s,
            sample_seeds(options.seed, ti, set_index, n * k),
            temperature=t,
            top_k=options.top_k,
            top_p=options.top_p,
            params=params,
            batch_size=round_batch(options.batch_size, model, len(prompts)),
            bucket=length_bucket(max(len(p) for p in prefixes)),
        )
        sc = score_candidates(gen.reshape(n, k, s), suffixes)
        curve = {}
        for kk in options.curve:
            curve[str(kk)] = {
                "exact": proportion(sc["exact"][:, :kk].any(1)),
                "loose": proportion(sc["loose"][:, :kk].any(1)),
            }
        first = np.where(sc["exact"].any(1), sc["exact"].argmax(1), -1)
        per_t[str(t)] = {
            **rate_block(
                sc["exact"].any(1), sc["loose"].any(1), sc["match"].max(1), lens, options.seed
            ),
            "curve": curve,
            "examples": [
                {
                    "exact": bool(sc["exact"][i].any()),
                    "loose": bool(sc["loose"][i].any()),
                    "exact_samples": int(sc["exact"][i].sum()),
                    "best_distance": float(sc["distance"][i].min()),
                    "longest_match": int(sc["match"][i].max()),
                    "first_exact_sample": None if first[i] < 0 else int(first[i]),
                }
                for i in range(n)
            ],
        }
        if progress is not None:
            progress.update(1)
    out["temperatures"] = per_t
    out["decoder_calls_per_example"] = len(options.temperatures) * k * s
    return out
