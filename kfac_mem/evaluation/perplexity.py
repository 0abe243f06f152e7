"""Held-out perplexity: exp of the token-weighted mean next-token NLL over windows."""

from __future__ import annotations

from typing import Any

import numpy as np

from kfac_mem.evaluation.batching import pad_rows, place_batch, round_batch
from kfac_mem.evaluation.scoring import token_nll


def window_nll(model, windows: np.ndarray, params=None, batch_size: int = 8) -> np.ndarray:
    """Per-position NLL (nats) float64 [N, L-1] of windows int [N, L] (entry t predicts t+1)."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2 or not np.issubdtype(windows.dtype, np.integer):
        raise ValueError(
            f"`windows` must be an integer array [N, L] with L >= 2, got "
            f"{windows.dtype} {windows.shape}."
        )
    if windows.size and (windows.min() < 0 or windows.max() >= model.config.vocab_size):
        raise ValueError(f"`windows` has token ids outside [0, {model.config.vocab_size}).")
    params = model.params if params is None else params
    rows = round_batch(batch_size, model, windows.shape[0])
    out = np.zeros((windows.shape[0], windows.shape[1] - 1), np.float64)
    for start in range(0, windows.shape[0], rows):
        chunk = windows[start : start + rows].astype(np.int32)
        nll = token_nll(model, params, place_batch(model, pad_rows(chunk, rows)))
        out[start : start + len(chunk)] = np.asarray(nll, np.float64)[: len(chunk)]
    return out


def perplexity(
    model, windows: np.ndarray, params=None, batch_size: int = 8, include_windows: bool = False
) -> dict[str, Any]:
    """Perplexity of `model` (or `params`) on token windows int [N, L].

    Every position but the last of each window predicts the next token: N·(L−1) predictions, no
    padding. The headline number is exp(Σ NLL / #tokens) (token-weighted; docs/design.md §3).

    Returns:
      {"perplexity", "nll" (mean nats per token), "tokens", "windows", "window_length",
       "reference_batch_mean_perplexity": the reference release's variant, mean over batches of
       `batch_size` windows of exp(batch-mean NLL) — reported for comparison only, labelled so}.
      With `include_windows`, also "window_nll": the mean NLL of each window [N] (all windows
      have L − 1 predictions, so their mean is "nll"; for paired intervals over windows).
    """
    nll = window_nll(model, windows, params, batch_size)
    mean = float(nll.mean())
    batch_means = [nll[i : i + batch_size].mean() for i in range(0, nll.shape[0], batch_size)]
    out = {
        "perplexity": float(np.exp(mean)),
        "nll": mean,
        "tokens": int(nll.size),
        "windows": int(nll.shape[0]),
        "window_length": int(nll.shape[1] + 1),
        "reference_batch_mean_perplexity": float(np.mean(np.exp(batch_means))),
        "reference_batch_size": int(batch_size),
    }
    if include_windows:
        out["window_nll"] = nll.mean(axis=1).tolist()
    return out
