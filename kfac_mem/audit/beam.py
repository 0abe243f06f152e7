"""Beam search extraction, and where the true suffix ranks under the edited model and the baseline.

Beams are a batch dimension (`models.beam_search`, rows × width). Per example: exact / loose hits
among the `width` beams; the true suffix's log-probability log p(S | P) (teacher forced, nats,
summed over suffix tokens) under the model and under the baseline; and its beam rank = 1 + the
number of beams strictly more probable than the true suffix (1..width+1; width+1 means the beam
found `width` continuations more likely than the truth). The edited − baseline difference of the
log-probability is reported with a paired bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kfac_mem.audit.options import AuditOptions
from kfac_mem.audit.scoring import rate_block, score_candidates, suffix_lengths
from kfac_mem.evaluation.batching import length_bucket, pad_rows, place_batch, round_batch
from kfac_mem.evaluation.ragged import PAD, pad_right
from kfac_mem.evaluation.scoring import token_nll
from kfac_mem.stats import bootstrap_mean, compare_paired


def window_nll(model, params, windows: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Next-token NLL (nats) float64 [N, L-1] of equal-length windows [N, L]."""
    windows = np.asarray(windows, np.int32)
    rows = round_batch(batch_size, model, len(windows))
    out = []
    for start in range(0, len(windows), rows):
        chunk = windows[start : start + rows]
        nll = token_nll(model, params, place_batch(model, pad_rows(chunk, rows)))
        out.append(np.asarray(nll, np.float64)[: len(chunk)])
    return np.concatenate(out)


def suffix_logprob(
    model,
    params,
    prefixes: Sequence[Sequence[int]],
    suffixes: Sequence[Sequence[int]],
    batch_size: int = 32,
) -> np.ndarray:
    """log p(suffix | prefix), float64 [N] (sum over the suffix tokens); rows may differ in
    length (windows right-padded, each summed over its own suffix positions)."""
    windows = [list(map(int, p)) + list(map(int, x)) for p, x in zip(prefixes, suffixes)]
    nll = window_nll(model, params, pad_right(windows, fill=0), batch_size)
    return np.asarray(
        [-nll[i, len(p) - 1 : len(w) - 1].sum() for i, (p, w) in enumerate(zip(prefixes, windows))]
    )


def _beams(model, params, prefixes, s, options):
    from models import beam_search

    return beam_search(
        model,
        [list(map(int, p)) for p in prefixes],
        s,
        options.beam_width,
        params=params,
        batch_size=round_batch(options.beam_batch, model, len(prefixes)),
        bucket=length_bucket(max(len(p) for p in prefixes)),
    )


def beam_extraction(
    model,
    params,
    baseline,
    baseline_params,
    prefixes: Sequence[Sequence[int]],  # N prompts (lengths may differ)
    suffixes: Sequence[Sequence[int]],  # N suffixes (lengths may differ)
    options: AuditOptions,
) -> dict[str, Any]:
    """Beam hits under the model; true-suffix log-probability and beam rank under model and
    baseline (see module doc). Rows are searched in groups of one suffix length, so every beam
    is exactly |S_i| tokens long and its score compares with log p(S_i | P_i). Cost: 2 × width ×
    |S| decoder calls + 2 forwards per example."""
    n = len(suffixes)
    lens = suffix_lengths(suffixes)
    s = int(lens.max())
    side = {}
    for name, (m, p) in {"model": (model, params), "baseline": (baseline, baseline_params)}.items():
        beams = np.full((n, options.beam_width, s), PAD, np.int32)
        scores = np.zeros((n, options.beam_width), np.float32)
        for length in np.unique(lens):
            idx = np.flatnonzero(lens == length)
            b, sc = _beams(m, p, [prefixes[i] for i in idx], int(length), options)
            beams[idx, :, :length], scores[idx] = b, sc
        logp = suffix_logprob(m, p, prefixes, suffixes, options.batch_size)
        # Tolerance: the beam's running sum and the teacher-forced sum differ by float rounding.
        rank = 1 + (scores > logp[:, None] + 1e-4 * np.maximum(1.0, np.abs(logp[:, None]))).sum(1)
        side[name] = {"beams": beams, "scores": scores, "logp": logp, "rank": rank}
    sc = score_candidates(side["model"]["beams"], suffixes)
    out = {
        "n": n,
        "width": options.beam_width,
        **rate_block(
            sc["exact"].any(1), sc["loose"].any(1), sc["match"].max(1), lens, options.seed
        ),
        "logp_model": bootstrap_mean(side["model"]["logp"], options.seed),
        "logp_baseline": bootstrap_mean(side["baseline"]["logp"], options.seed),
        "logp_difference": compare_paired(
            side["model"]["logp"], side["baseline"]["logp"], options.seed
        ),
        "rank_model": bootstrap_mean(side["model"]["rank"].astype(float), options.seed),
        "rank_baseline": bootstrap_mean(side["baseline"]["rank"].astype(float), options.seed),
        "decoder_calls_per_example": 2 * options.beam_width * s,
        "examples": [
            {
                "exact": bool(sc["exact"][i].any()),
                "loose": bool(sc["loose"][i].any()),
                "best_distance": float(sc["distance"][i].min()),
                "longest_match": int(sc["match"][i].max()),
                "logp_model": float(side["model"]["logp"][i]),
                "logp_baseline": float(side["baseline"]["logp"][i]),
                "rank_model": int(side["model"]["rank"][i]),
                "rank_baseline": int(side["baseline"]["rank"][i]),
                "top_beam_logp": float(side["model"]["scores"][i, 0]),
            }
            for i in range(n)
        ],
    }
    return out
