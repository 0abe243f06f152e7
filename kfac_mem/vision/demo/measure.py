"""The Table-2 measures of a parameter set: on all training images, the fit and selection parts,
and (after every choice is made) the validation images; paired tests between variants."""

from __future__ import annotations

from typing import Any

import numpy as np

from kfac_mem.stats import compare_paired, proportion
from kfac_mem.vision.demo.split import Noisy
from kfac_mem.vision.metrics import noise_report, predict
from models.vision_model import VisionModel

TABLE2_MEASURES = ("noisy_label_memorized", "true_label_recovered", "val_accuracy")


def measure(model: VisionModel, params, noisy: Noisy, validation: bool) -> dict[str, Any]:
    """Table-2 measures on all training images, on the fit and selection parts, and (only when
    `validation`) on the validation images."""
    d = noisy.data
    pred = predict(model, params, d.train_images)
    val_pred = predict(model, params, d.val_images) if validation else np.zeros(0, np.int32)
    val_labels = d.val_labels if validation else np.zeros(0, np.int32)

    def part(idx):
        r = noise_report(
            pred[idx],
            noisy.noisy_labels[idx],
            d.train_labels[idx],
            noisy.noise_mask[idx],
            val_pred,
            val_labels,
        )
        r.pop("val_accuracy")
        return r

    out = {
        "train": part(np.arange(len(pred))),
        "fit": part(noisy.fit),
        "selection": part(noisy.selection),
    }
    if validation:
        out["val_accuracy"] = float(np.mean(val_pred == val_labels))
        mask = noisy.noise_mask
        out["outcomes"] = {  # 0/1 per image, for intervals and paired tests
            "noisy_label_memorized": (pred[mask] == noisy.noisy_labels[mask]).astype(int).tolist(),
            "true_label_recovered": (pred[mask] == d.train_labels[mask]).astype(int).tolist(),
            "val_accuracy": (val_pred == val_labels).astype(int).tolist(),
        }
    return out


def table2_row(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "noisy_label_memorized": m["train"]["noisy_label_memorized"],
        "true_label_recovered": m["train"]["noisy_true_label_recovered"],
        "clean_train_accuracy": m["train"]["clean_train_accuracy"],
        "val_accuracy": m["val_accuracy"],
        "intervals": {k: proportion(m["outcomes"][k]) for k in TABLE2_MEASURES},
        "fit_part": m["fit"],
        "selection_part": m["selection"],
    }


def paired_table2(results: dict[str, Any]) -> dict[str, Any]:
    """K-FAC against the unedited model and against SVD on the same images, per Table-2 measure:
    paired difference (K-FAC − other) with its 95% interval and exact McNemar."""
    k = results["kfac"]["outcomes"]
    return {
        f"kfac_vs_{other}": {
            m: compare_paired(k[m], results[other]["outcomes"][m]) for m in TABLE2_MEASURES
        }
        for other in ("before", "svd")
    }
