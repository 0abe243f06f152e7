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
Windows may differ in length (the quotes protocol): each is scored over its own L − 1 predictions
(right-padded arrays, padding never read), and `run_audit` cuts the clean negatives to the same
length distribution as the memorized windows. Each score gives the ROC AUC of memorized (positive) against clean (negative), with a stratified
bootstrap interval, `separation` = max(AUC, 1 − AUC), and the TPR at FPR ≤ 1% (largest TPR of the
ROC curve with FPR ≤ 0.01; with fewer than 100 clean windows that means no false positive), as a
Wilson proportion of memorized windows above that threshold.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from kfac_mem.audit.beam import window_nll
from kfac_mem.audit.scoring import span
from kfac_mem.errors import InputError
from kfac_mem.evaluation.ragged import pad_right
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
    model,
    params,
    baseline,
    baseline_params,
    windows: np.ndarray | Sequence[Sequence[int]],
    min_k: float,
    batch_size: int,
):
    """{score name: float64 [N]} oriented so that higher = more likely a member; `windows` is
    [N, L] or N token lists of lengths L_i ≥ 2 (each scored over its own positions)."""
    rows = [np.asarray(w, np.int32) for w in windows]
    lengths = np.asarray([w.size for w in rows], np.int64)
    padded = pad_right(rows, fill=0)
    valid = np.arange(padded.shape[1] - 1)[None] < (lengths - 1)[:, None]  # [N, W-1]
    nll = window_nll(model, params, padded, batch_size)
    ref = window_nll(baseline, baseline_params, padded, batch_size)
    count = lengths - 1
    loss = np.where(valid, nll, 0.0).sum(1) / count
    ref_loss = np.where(valid, ref, 0.0).sum(1) / count
    k = np.maximum(1, np.ceil(min_k * count).astype(np.int64))
    ranked = np.sort(np.where(valid, nll, -np.inf), axis=1)  # padding sorts first
    min_k_score = np.asarray([-ranked[i, -k[i] :].mean() for i in range(len(rows))])
    z = np.asarray([zlib_bytes(model, w) for w in rows], np.float64)
    return {
        "loss": -loss,
        "zlib": -loss / z,
        "min_k": min_k_score,
        "reference": ref_loss - loss,
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
    memorized: np.ndarray | Sequence[Sequence[int]],  # [N, L], or N windows of lengths L_i
    clean: np.ndarray | Sequence[Sequence[int]],  # [M, L], or M windows (same length mix)
    min_k: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """AUC (bootstrap interval), separation, TPR at 1% FPR and the ROC curve of every score.

    Every clean window must have the length of some memorized window (arrays: the same width;
    lists: `runner.length_matched`), so the scores, means over positions, compare like for like."""
    mem_len = sorted({len(w) for w in memorized})
    clean_len = sorted({len(w) for w in clean})
    if not set(clean_len) <= set(mem_len):
        raise InputError(
            f"Window widths differ: memorized {span(mem_len)} vs clean {span(clean_len)} tokens."
        )
    pos = window_scores(model, params, baseline, baseline_params, memorized, min_k, batch_size)
    neg = window_scores(model, params, baseline, baseline_params, clean, min_k, batch_size)
    out: dict[str, Any] = {
        "n_memorized": len(memorized),
        "n_clean": len(clean),
        "width": span([len(w) for w in memorized]),
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
