"""The vision demo's summary.json and report.md (the Table-2 layout, sweep, SVD control)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from kfac_mem.manifest import run_manifest
from kfac_mem.stats import fmt_diff, fmt_pct
from kfac_mem.vision.data import ImageDataset
from kfac_mem.vision.demo.config import VisionDemoConfig
from kfac_mem.vision.demo.measure import TABLE2_MEASURES, paired_table2, table2_row
from kfac_mem.vision.demo.split import Noisy

# The paper's Table 2 (ViT-B/16 on ImageNet, 10% random labels), percent.
PAPER_TABLE2 = {
    "before": {"memorized": 81.6, "true_label": 10.5, "val_accuracy": 67.0},
    "svd": {"memorized": 3.5, "true_label": 58.9, "val_accuracy": 67.8},
    "kfac": {"memorized": 3.5, "true_label": 66.5, "val_accuracy": 71.7},
    "setting": "ViT-B/16 MLP layers 0 and 11, fc1+fc2, rho 0.75",
}


@dataclasses.dataclass(frozen=True)
class VisionRun:
    """What the vision demo's stages produced: the inputs of its summary."""

    config: VisionDemoConfig
    data: ImageDataset
    noisy: Noisy
    results: dict[str, Any]  # "before" / "kfac" / "svd" -> `measure(..., validation=True)`
    rows: list[dict[str, Any]]  # the sweep, with `posthoc` measures
    chosen: dict[str, Any]
    svd_rows: list[dict[str, Any]]
    svd_pick: dict[str, Any]
    kfac_report: list[dict[str, Any]]
    svd_report: list[dict[str, Any]]
    factors: Any  # the factor run
    timings: dict[str, float]
    train_seconds: float | None


def build_summary(run: VisionRun) -> dict[str, Any]:
    """summary.json of a vision demo run: the Table-2 rows with intervals and paired tests, the
    choice, the sweep, the SVD control, factors, data, config, timings and the run manifest."""
    config, data, noisy, results, chosen = run.config, run.data, run.noisy, run.results, run.chosen
    b, k, s = (table2_row(results[n]) for n in ("before", "kfac", "svd"))
    fifth = k["noisy_label_memorized"] <= b["noisy_label_memorized"] / 5
    val_ok = k["val_accuracy"] >= b["val_accuracy"]
    return {
        "preset": config.name,
        "noisy_label_memorized_before": b["noisy_label_memorized"],
        "noisy_label_memorized_after": k["noisy_label_memorized"],
        "true_label_recovered_before": b["true_label_recovered"],
        "true_label_recovered_after": k["true_label_recovered"],
        "val_accuracy_before": b["val_accuracy"],
        "val_accuracy_after": k["val_accuracy"],
        "rows": {"before": b, "kfac": k, "svd": s},
        "paired_tests": paired_table2(results),
        "targets": {
            "memorized_to_a_fifth_or_less": bool(fifth),
            "val_accuracy_not_lower": bool(val_ok),
        },
        "targets_met": bool(fifth and val_ok),
        "chosen": {
            "layers": chosen["layers"],
            "projections": chosen["projections"],
            "rho": chosen["rho"],
            "eligible": chosen["eligible"],
            "rule": (
                "lowest noisy-label memorization on the selection part of the training images, "
                f"among settings whose clean selection accuracy is within {config.clean_tolerance} "
                "of the unedited model's; validation never consulted"
            ),
        },
        "sweep": run.rows,
        "svd": {
            "drop": run.svd_pick["drop"],
            "matched_on": "noisy-label memorization on the selection part (same matrices)",
            "candidates": run.svd_rows,
            "report": run.svd_report,
        },
        "kfac_edit_report": run.kfac_report,
        "factors": {
            "path": run.factors.directory,
            "n_positions": run.factors.n_tokens,
            "mode": config.factor_mode,
            "positions": "CLS only (loss weight 1 at CLS)",
            "images": "fit part of the training set",
        },
        "data": {
            **data.describe(),
            "n_noisy": int(noisy.noise_mask.sum()),
            "noise_fraction": config.noise_fraction,
            "n_fit": len(noisy.fit),
            "n_selection": len(noisy.selection),
        },
        "config": config.to_dict(),
        "timings_s": {
            **run.timings,
            "training_only": None if run.train_seconds is None else round(run.train_seconds, 2),
        },
        "paper_table2": PAPER_TABLE2,
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "manifest": run_manifest(
            {
                k: getattr(config, k)
                for k in ("data_seed", "noise_seed", "model_seed", "split_seed", "factor_seed")
            }
        ),
    }


def format_table2(summary: dict[str, Any]) -> str:
    r = summary["rows"]
    c = summary["chosen"]
    layers = "+".join(f"L{i}" for i in c["layers"])
    n = {m: r["before"]["intervals"][m]["n"] for m in TABLE2_MEASURES}
    lines = [
        f"| method | noisy labels memorized (n = {n['noisy_label_memorized']}) | true label on "
        f"noisy images (n = {n['true_label_recovered']}) | validation accuracy (n = "
        f"{n['val_accuracy']}) |",
        "|---|---|---|---|",
    ]
    names = {
        "before": "unedited",
        "kfac": f"K-FAC ({layers} {'+'.join(c['projections'])}, ρ={c['rho']})",
        "svd": f"SVD (same matrices, drop {summary['svd']['drop']:.0%})",
    }
    for key in ("before", "kfac", "svd"):
        ci = r[key]["intervals"]
        lines.append(
            f"| {names[key]} | " + " | ".join(f"{fmt_pct(ci[m])}%" for m in TABLE2_MEASURES) + " |"
        )
    lines += [
        "",
        "Rates with Wilson 95% intervals. Paired tests on the same images (K-FAC − other, "
        "percentage points, 95% interval, exact McNemar p):",
        "",
        "| comparison | noisy labels memorized | true label | validation accuracy |",
        "|---|---|---|---|",
    ]
    for key, tests in summary["paired_tests"].items():
        other = "unedited" if key.endswith("before") else "SVD"
        lines.append(
            f"| K-FAC − {other} | " + " | ".join(fmt_diff(tests[m]) for m in TABLE2_MEASURES) + " |"
        )
    return "\n".join(lines)


def render_report(summary: dict[str, Any], table: str) -> str:
    p = summary["paper_table2"]
    d = summary["data"]
    sweep = "\n".join(
        f"| {'+'.join(f'L{i}' for i in row['layers'])} | {row['rho']} | "
        f"{row['selection_noisy_label_memorized']:.1%} | {row['selection_clean_accuracy']:.1%} | "
        f"{'yes' if row['eligible'] else 'no'} | "
        f"{row['posthoc']['noisy_label_memorized']:.1%} | "
        f"{row['posthoc']['true_label_recovered']:.1%} | {row['posthoc']['val_accuracy']:.1%} |"
        for row in summary["sweep"]
    )
    svd = "\n".join(
        f"| {row['drop']:.0%} | {row['selection_noisy_label_memorized']:.1%} | "
        f"{row['selection_clean_accuracy']:.1%} |"
        for row in summary["svd"]["candidates"]
    )
    t = summary["timings_s"]
    met = summary["targets"]
    return f"""# Vision demo ({summary["preset"]}): label-noise memorization (paper Table 2)

Data: {d["source"]}, {d["n_train"]} training images of which {d["n_noisy"]} carry a random other
label ({d["noise_fraction"]:.0%}), {d["n_val"]} validation images. Training images are split into a
fit part ({d["n_fit"]}, factors) and a selection part ({d["n_selection"]}, choosing the edit).

{table}

Memorized / true label: over all {d["n_noisy"]} noisy training images. Validation is measured only
after the setting was chosen.

Targets: memorized to a fifth or less: {"yes" if met["memorized_to_a_fifth_or_less"] else "NO"};
validation accuracy not lower: {"yes" if met["val_accuracy_not_lower"] else "NO"}.

Paper ({p["setting"]}; ImageNet, 10% noisy labels):

| method | noisy labels memorized | true label on noisy images | validation accuracy |
|---|---|---|---|
| unedited | {p["before"]["memorized"]}% | {p["before"]["true_label"]}% | {p["before"]["val_accuracy"]}% |
| K-FAC | {p["kfac"]["memorized"]}% | {p["kfac"]["true_label"]}% | {p["kfac"]["val_accuracy"]}% |
| SVD | {p["svd"]["memorized"]}% | {p["svd"]["true_label"]}% | {p["svd"]["val_accuracy"]}% |

## Sweep (selection part of the training images)

Rule: {summary["chosen"]["rule"]}.

The last three columns are measured after the choice, on all training images and on
validation, for reference only.

| layers (fc1+fc2) | ρ | selection: noisy memorized | selection: clean accuracy | eligible | all noisy: memorized | all noisy: true label | validation |
|---|---|---|---|---|---|---|---|
{sweep}

## SVD control ({summary["svd"]["matched_on"]})

| drop | noisy memorized | clean accuracy |
|---|---|---|
{svd}

## Factors and time

{summary["factors"]["n_positions"]} CLS positions ({summary["factors"]["mode"]} labels) from the fit
part. Stage wall times (s): {", ".join(f"{k} {v}" for k, v in t.items() if v is not None)}.
Devices: {summary["devices"]}.
"""
