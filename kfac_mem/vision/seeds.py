"""The vision demo repeated over seeds: every seed-dependent stage (label-noise draw, ViT
initialization and data order, fit/selection split, sampled labels of the factors) gets the
seed; the data's train/validation split stays fixed so every seed is scored on the same
validation images. Headline = mean, sample standard deviation and Student-t 95% interval of each
Table-2 rate across seeds (`stats.across_seeds`), beside each seed's own Wilson intervals and
paired tests.

Writes OUT/seed-<s>/ (one full demo run each), OUT/seeds.json and OUT/seeds.md through the
project's one multi-seed mechanism (`kfac_mem.experiments.seeds.run_seeds`); this module declares
what a seed changes (`seeded`), which numbers are aggregated (`measures`) and the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from kfac_mem.demo.presets import demo_config
from kfac_mem.experiments.seeds import aggregate as aggregate_tree
from kfac_mem.experiments.seeds import parse_seeds, run_seeds
from kfac_mem.stats import fmt_interval
from kfac_mem.vision.demo import TABLE2_MEASURES, VisionDemoConfig, run_vision_demo

__all__ = ["aggregate", "measures", "parse_seeds", "run_vision_seeds", "seeded"]

SEED_FIELDS = ("noise_seed", "model_seed", "split_seed", "factor_seed")
LABELS = {"before": "unedited", "kfac": "K-FAC", "svd": "SVD"}
MEASURE_LABELS = {
    "noisy_label_memorized": "noisy labels memorized",
    "true_label_recovered": "true label on noisy images",
    "val_accuracy": "validation accuracy",
}


def seeded(config: VisionDemoConfig, seed: int) -> VisionDemoConfig:
    """`config` with every seed-dependent stage on `seed` (the data split unchanged)."""
    return dataclasses.replace(config, **dict.fromkeys(SEED_FIELDS, seed))


def measures(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one seed aggregated across seeds: each method's Table-2 rates and each
    paired difference (K-FAC − other)."""
    return {
        "rates": {
            method: {m: summary["rows"][method][m] for m in TABLE2_MEASURES} for method in LABELS
        },
        "differences": {
            key: {m: test[m]["difference"] for m in TABLE2_MEASURES}
            for key, test in summary["paired_tests"].items()
        },
    }


def aggregate(summaries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Across seeds: each method's Table-2 rates and each paired difference (K-FAC − other)."""
    return aggregate_tree({s: measures(x) for s, x in summaries.items()})


def render(result: dict[str, Any]) -> str:
    seeds, agg, per = result["seeds"], result["aggregate"], result["per_seed"]
    n = {m: per[str(seeds[0])]["rows"]["before"]["intervals"][m]["n"] for m in TABLE2_MEASURES}
    head = " | ".join(f"{MEASURE_LABELS[m]} (n = {n[m]} per seed)" for m in TABLE2_MEASURES)
    lines = [
        f"# Vision demo ({result['preset']}) over seeds {seeds}",
        "",
        f"Command: `{result['command']}`. Each seed retrains the ViT (initialization and data "
        "order), redraws the label noise, the fit/selection split and the factors' sampled "
        "labels; the validation images are the same for every seed. Mean over seeds with the "
        f"Student-t 95% interval across the {len(seeds)} seeds and the standard deviation.",
        "",
        f"| method | {head} |",
        "|---|---|---|---|",
    ]

    def cell(r):
        return f"{fmt_interval(r, 'mean', 100.0)}% (sd {100 * r['sd']:.1f})"

    for method, label in LABELS.items():
        lines.append(
            f"| {label} | "
            + " | ".join(cell(agg["rates"][method][m]) for m in TABLE2_MEASURES)
            + " |"
        )
    lines += [
        "",
        "Paired differences (K-FAC − other, percentage points, same images within a seed), mean "
        "over seeds with the t 95% interval:",
        "",
        "| comparison | " + " | ".join(MEASURE_LABELS[m] for m in TABLE2_MEASURES) + " |",
        "|---|---|---|---|",
    ]
    for key, d in agg["differences"].items():
        other = "unedited" if key.endswith("before") else "SVD"
        lines.append(
            f"| K-FAC − {other} | "
            + " | ".join(fmt_interval(d[m], "mean", 100.0) for m in TABLE2_MEASURES)
            + " |"
        )
    lines += [
        "",
        "Per seed (chosen edit; noisy labels memorized before -> after with Wilson 95% "
        "intervals; exact McNemar p of K-FAC vs unedited on the noisy images):",
        "",
        "| seed | chosen | memorized before | memorized after | McNemar p | validation before "
        "-> after |",
        "|---|---|---|---|---|---|",
    ]
    for s in seeds:
        x = per[str(s)]
        c = x["chosen"]
        b, k = x["rows"]["before"]["intervals"], x["rows"]["kfac"]["intervals"]
        p = x["paired_tests"]["kfac_vs_before"]["noisy_label_memorized"]["mcnemar"]["p_value"]
        lines.append(
            f"| {s} | L{'+L'.join(map(str, c['layers']))} {'+'.join(c['projections'])} "
            f"ρ={c['rho']} | {fmt_interval(b['noisy_label_memorized'], 'rate', 100.0)} | "
            f"{fmt_interval(k['noisy_label_memorized'], 'rate', 100.0)} | {p:.2g} | "
            f"{100 * x['rows']['before']['val_accuracy']:.1f} -> "
            f"{100 * x['rows']['kfac']['val_accuracy']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _keep(summary: dict[str, Any]) -> dict[str, Any]:
    """What of a seed's summary goes into seeds.json (per-image outcomes stay in its summary)."""
    keep = ("rows", "paired_tests", "chosen", "targets_met", "timings_s")
    out = {k: summary[k] for k in keep}
    out["rows"] = {
        m: {k: v for k, v in row.items() if k != "outcomes"} for m, row in out["rows"].items()
    }
    return out


def run_vision_seeds(
    preset: str | VisionDemoConfig,
    seeds: Sequence[int],
    out: str,
    mesh=None,
    rules=None,
    retrain: bool = False,
    log: Callable[[str], None] | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run the vision demo once per seed under OUT/seed-<s>/ and aggregate (see module doc)."""
    config = demo_config(preset) if isinstance(preset, str) else preset
    result = run_seeds(
        seeds,
        lambda s, directory: run_vision_demo(
            seeded(config, s), directory, mesh, rules, retrain, log
        ),
        measures,
        out,
        experiment=f"vision demo ({config.name})",
        seed_fields=SEED_FIELDS,
        render=render,
        keep=_keep,
        command=command,
        extra={"preset": config.name},
        log=log,
    )
    return result
