"""nDCG@k of a model's next-token ranking against a baseline model's top-k (docs/design.md §3).

At each position, the model's rank-r token (r = 1..k) has relevance k − b + 1 if it is the
baseline's rank-b token (b ≤ k), else 0. DCG = Σ_r rel_r / log2(r + 1); dividing by the ideal DCG
(the baseline's own order) gives nDCG ∈ [0, 1]: 1 for an identical top-k, 0 for a disjoint one.
The baseline's top-k ids are cached on disk under its weight fingerprint (not its name), the
window contents and k, so a cold cache never silently scores a model against itself.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from kfac_mem.atomic import save_npy_atomic
from kfac_mem.evaluation.batching import pad_rows, place_batch, round_batch
from kfac_mem.evaluation.scoring import top_k_ids

CACHE_ENV = "KFAC_MEM_CACHE"


def default_cache_dir() -> str:
    """`$KFAC_MEM_CACHE/ndcg`, else `~/.cache/kfac_mem/ndcg`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "kfac_mem")
    return os.path.join(root, "ndcg")


def ndcg_from_topk(model_topk: np.ndarray, baseline_topk: np.ndarray) -> np.ndarray:
    """nDCG per position, float64 [...], from ranked ids [..., k] of the model and the baseline.

    Assumes each row of `baseline_topk` holds k distinct ids (a top-k always does).
    """
    model_topk = np.asarray(model_topk)
    baseline_topk = np.asarray(baseline_topk)
    if model_topk.shape != baseline_topk.shape:
        raise ValueError(
            f"Top-k shapes differ: model {model_topk.shape} vs baseline {baseline_topk.shape}."
        )
    k = model_topk.shape[-1]
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # rank r = 1..k -> 1 / log2(r + 1)
    gains = np.arange(k, 0, -1, dtype=np.float64)  # baseline rank b = 1..k -> k - b + 1
    # match[..., r, b]: the model's rank-r token is the baseline's rank-b token.
    match = model_topk[..., :, None] == baseline_topk[..., None, :]
    relevance = (match * gains).sum(-1)  # [..., k]
    return (relevance * discount).sum(-1) / (gains * discount).sum()


def topk_rankings(
    model, windows: np.ndarray, params=None, k: int = 10, batch_size: int = 8
) -> np.ndarray:
    """Top-k next-token ids int32 [N, L, k] of `model` (or `params`) at every window position."""
    params = model.params if params is None else params
    windows = np.asarray(windows, np.int32)
    rows = round_batch(batch_size, model, windows.shape[0])
    out = np.zeros((*windows.shape, k), np.int32)
    for start in range(0, windows.shape[0], rows):
        chunk = windows[start : start + rows]
        ids = top_k_ids(model, params, place_batch(model, pad_rows(chunk, rows)), k)
        out[start : start + len(chunk)] = np.asarray(ids)[: len(chunk)]
    return out


def _cache_path(cache_dir: str, fingerprint: str, windows: np.ndarray, k: int) -> str:
    h = hashlib.sha256()
    h.update(fingerprint.encode())
    h.update(str((windows.shape, k)).encode())
    h.update(np.ascontiguousarray(windows, np.int32).tobytes())
    return os.path.join(cache_dir, f"top{k}-{fingerprint}-{h.hexdigest()[:16]}.npy")


def baseline_rankings(
    baseline,
    windows: np.ndarray,
    baseline_params=None,
    k: int = 10,
    batch_size: int = 8,
    cache_dir: str | None = None,
) -> tuple[np.ndarray, str, str]:
    """(the baseline's top-k ids [N, L, k], cache file path, weight fingerprint), computed once per
    weights and windows.

    `cache_dir=""` disables the cache. The file name holds the baseline's weight fingerprint
    (`models.language_model.fingerprint` of the parameters actually used) and a hash of the windows.
    """
    from models.language_model import fingerprint

    params = baseline.params if baseline_params is None else baseline_params
    windows = np.asarray(windows, np.int32)
    fp = fingerprint(params)
    if cache_dir == "":
        return topk_rankings(baseline, windows, params, k, batch_size), "", fp
    path = _cache_path(cache_dir or default_cache_dir(), fp, windows, k)
    if os.path.isfile(path):
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (*windows.shape, k):
            return cached, path, fp
    ranks = topk_rankings(baseline, windows, params, k, batch_size)
    save_npy_atomic(path, ranks)
    return ranks, path, fp


def ndcg_at_k(
    model,
    windows: np.ndarray,
    baseline=None,
    params=None,
    baseline_params=None,
    k: int = 10,
    batch_size: int = 8,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Mean nDCG@k over every position of `windows` int [N, L] of `model`/`params` vs a baseline.

    Args:
      model, params: the evaluated model (and optional parameter override, e.g. edited weights).
      baseline, baseline_params: the reference ranking; `baseline` defaults to `model`, so the
        in-process "edited vs original" case is `ndcg_at_k(model, w, params=edited,
        baseline_params=model.params)`.
      k: ranking depth. cache_dir: where baseline rankings are cached ("" = no cache).

    Returns:
      {"ndcg": mean over positions, "k", "positions", "baseline_fingerprint", "cache"}.
    """
    baseline = model if baseline is None else baseline
    if baseline.config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"nDCG compares token rankings, but the baseline's vocabulary "
            f"({baseline.config.vocab_size}) differs from the model's "
            f"({model.config.vocab_size})."
        )
    base, path, fp = baseline_rankings(baseline, windows, baseline_params, k, batch_size, cache_dir)
    mine = topk_rankings(model, windows, params, k, batch_size)
    scores = ndcg_from_topk(mine, base)
    return {
        "ndcg": float(scores.mean()),
        "k": k,
        "positions": int(scores.size),
        "baseline_fingerprint": fp,
        "cache": path,
    }
