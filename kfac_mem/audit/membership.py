"""Membership inference: can memorized windows be told from held-out clean windows?

Per window w of L tokens (memorized: prefix ‖ suffix; clean: the first L tokens of a held-out
window), with ℓ_t = −log p(w_{t+1} | w_{≤t}) under the audited model (L − 1 predictions):
  * `loss`: mean ℓ (lower = member); score −loss;
  * `zlib`: mean ℓ divided by the zlib-compressed size in bytes of the window (its decoded UTF-8
    text with a tokenizer, else its int32 token ids) (Carlini et al. 2021); score −ratio;
  * `min_k`: mean of log p over the ⌈k·(L−1)⌉ least likely tokens (Shi et al. 2024); score as is;
  * `reference`: mean ℓ under the baseline minus mean ℓ under the audited model (the reference
    model attack with the unedited model as reference); higher = member. For the unedited model
    itself it is 0 everywhere (AUC 0.5). AUC < 0.5 means the edit made exactly the memorized
    windows less likely than the baseline does: an attacker holding both models can still tell
    them apart (see `separation`).
Each score gives the ROC AUC of memorized (positive) against clean (negative), with a stratified
bootstrap interval, `separation` = max(AUC, 1 − AUC), and the TPR at FPR ≤ 1% (largest TPR of the
ROC curve with FPR ≤ 0.01; with fewer than 100 clean windows that means no false positive), as a
Wilson proportion of memorized windows above that threshold.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from kfac_mem.audit.beam import window_nll
from kfac_mem.stats import bootstrap_two_sample, proportion

SCORES = ("loss", "zlib", "min_k", "reference")
FPR = 0.01


def auc(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann–Whitney ROC AUC of positives [..., n] against negatives [..., m] (ties count 1/2),
    vectorized over leading axes (equals `sklearn.metrics.roc_auc_score`)."""
    pos, neg = np.moveaxis(pos, axis, -1), np.moveaxis(neg, axis, -1)
    d = pos[..., :, None] - neg[..., None, :]
    return ((d > 0) + 0.5 * (d == 0)).mean(axis=(-2, -1))


def zlib_bytes(model, window: np.ndarray) -> int:
    tok = getattr(model, "tokenizer", None)
    data = (
        tok.decode(list(map(int, window)), skip_special_tokens=False).encode("utf-8")
        if tok is not None
        else np.asarray(window, np.int32).tobytes()
    )
    return len(zlib.compress(data))


def window_scores(
    model, params, baseline, baseline_params, windows: np.ndarray, min_k: float, batch_size: int
):
    """{score name: float64 [N]} oriented so that higher = more likely a member."""
    nll = window_nll(model, params, windows, batch_size)
    ref = window_nll(baseline, baseline_params, windows, batch_size)
    loss = nll.mean(1)
    k = max(1, math.ceil(min_k * nll.shape[1]))
    z = np.asarray([zlib_bytes(model, w) for w in windows], np.float64)
    return {
        "loss": -loss,
        "zlib": -loss / z,
        "min_k": -np.sort(nll, axis=1)[:, -k:].mean(1),
        "reference": ref.mean(1) - loss,
    }


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = FPR) -> dict[str, Any]:
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    f, t, thr = roc_curve(y, np.r_[pos, neg])
    ok = f <= fpr
    i = int(np.flatnonzero(ok)[np.argmax(t[ok])])
    k = int(np.rint(t[i] * len(pos)))
    return {**proportion(k, len(pos)), "fpr": float(f[i]), "threshold": float(thr[i])}


def membership_inference(
    model,
    params,
    baseline,
    baseline_params,
    memorized: np.ndarray,  # [N, L]
    clean: np.ndarray,  # [M, L]
    min_k: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """AUC (bootstrap interval), separation, TPR at 1% FPR and the ROC curve of every score."""
    if memorized.shape[1] != clean.shape[1]:
        raise ValueError(f"Window widths differ: {memorized.shape[1]} vs {clean.shape[1]}.")
    pos = window_scores(model, params, baseline, baseline_params, memorized, min_k, batch_size)
    neg = window_scores(model, params, baseline, baseline_params, clean, min_k, batch_size)
    out: dict[str, Any] = {
        "n_memorized": len(memorized),
        "n_clean": len(clean),
        "width": int(memorized.shape[1]),
    }
    for name in SCORES:
        a = bootstrap_two_sample(pos[name], neg[name], auc, seed)
        y = np.r_[np.ones(len(pos[name])), np.zeros(len(neg[name]))]
        sk = float(roc_auc_score(y, np.r_[pos[name], neg[name]]))
        f, t, _ = roc_curve(y, np.r_[pos[name], neg[name]])
        out[name] = {
            "auc": a,
            "auc_sklearn": sk,
            "separation": max(sk, 1 - sk),
            "tpr_at_1pct_fpr": tpr_at_fpr(pos[name], neg[name]),
            "roc": {"fpr": f.tolist(), "tpr": t.tolist()},
            "memorized_scores": pos[name].tolist(),
            "clean_scores": neg[name].tolist(),
        }
    out["forwards_per_window"] = 2
    return out
