"""The LM demo repeated over seeds (`kfac-mem demo --seeds 0-4`, presets default and tiny).

A seed replaces `DemoConfig.seed`, which drives every seed-dependent stage of the demo: the
sampled labels of the factor collection (and so the eigenbases, the sweep's choice and the edit),
the random-basis control, the analyzer's sampled labels, and the model's initialization when the
model is trained in the run (the `tiny` preset, or `retrain`). The data (`mixture.seed`: the
memorized passages the committed model was trained on) and the memorized train/validation split
(`split_seed`) stay fixed, so every seed is scored on the same held-out windows. Aggregation across
seeds is the project's one multi-seed mechanism (`kfac_mem.experiments.seeds`; docs/design.md §3).

Writes OUT/seed-<s>/ (one full demo run each, resumable), OUT/seeds.json and OUT/seeds.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from kfac_mem.demo.config import DemoConfig
from kfac_mem.demo.presets import demo_config
from kfac_mem.experiments.seeds import render_table, run_seeds

__all__ = ["SEED_FIELDS", "measures", "run_demo_seeds", "seeded"]

SEED_FIELDS = ("seed",)
SETS = ("memorized_train", "memorized_validation", "canaries")


def seeded(config: DemoConfig, seed: int) -> DemoConfig:
    """`config` with every seed-dependent stage on `seed` (data and memorized split unchanged)."""
    return dataclasses.replace(config, seed=seed)


def measures(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one seed's `summary.json` aggregated across seeds: per variant (unedited,
    K-FAC, SVD, random basis) strict recitation per memorized set, mean d/L on the held-out
    windows, perplexity, nDCG@10 and skill accuracy; K-FAC's retention per skill group; the
    paired differences K-FAC − other; the chosen ρ and whether the targets were met (0/1)."""
    variants = {
        name: {
            **{f"strict_{s}": r[s]["strict"] for s in SETS},
            "mean_distance_memorized_validation": r["memorized_validation"]["mean_distance"],
            "perplexity": r["perplexity"],
            "ndcg@10": r["ndcg@10"],
            "skills": dict(r["skills"]),
        }
        for name, r in summary["table1"].items()
    }
    return {
        "variants": variants,
        "retention": dict(summary["retention"]),
        "differences": {
            key: {test: t["difference"] for test, t in tests.items()}
            for key, tests in summary["paired_tests"].items()
        },
        "chosen_rho": summary["chosen"]["rho"],
        "all_targets_met": float(summary["all_targets_met"]),
    }


def _keep(summary: dict[str, Any]) -> dict[str, Any]:
    """A seed's entry in seeds.json: its measures, chosen edit and the sets' sizes."""
    return {
        **measures(summary),
        "chosen": summary["chosen"],
        "n": {s: summary["table1"]["unedited"][s]["n"] for s in SETS},
    }


def _scale(path: tuple[str, ...]) -> float:
    """Percent for shares and their differences, as is for perplexity, nDCG, d/L and ρ."""
    if path[0] in ("retention", "differences", "all_targets_met"):
        return 100.0
    return 100.0 if path[-1].startswith("strict_") or "skills" in path else 1.0


def render(result: dict[str, Any]) -> str:
    per = result["per_seed"]
    seeds = result["seeds"]
    n = per[str(seeds[0])]["n"]
    intro = (
        f"Command: `{result['command']}`. Each seed reruns every seed-dependent stage "
        f"({', '.join(result['seed_fields'])}: sampled labels of the factors, hence the eigenbases "
        "and the chosen edit; the random-basis control; the analyzer; the model's initialization "
        "when it is trained in the run). The data and the memorized train/validation split are "
        f"fixed: every seed is scored on the same {n['memorized_validation']} held-out memorized "
        f"windows and {n['canaries']} canaries. Mean over {len(seeds)} seeds with the Student-t "
        "95% interval across seeds and the standard deviation; strict recitation, skill "
        "accuracy, retention and the paired differences (K-FAC − other, same examples) in %."
    )
    table = render_table(result, f"LM demo ({result['preset']}) over seeds {seeds}", intro, _scale)
    lines = [
        "",
        "Per seed (chosen edit; strict recitation of the held-out memorized windows, unedited -> "
        "K-FAC, %):",
        "",
        "| seed | chosen | held out before -> after | canaries before -> after |",
        "|---|---|---|---|",
    ]
    for s in seeds:
        x = per[str(s)]
        c, v = x["chosen"], x["variants"]
        lines.append(
            f"| {s} | L{'+L'.join(map(str, c['layers']))} {'+'.join(c['projections'])} "
            f"ρ={c['rho']} | {100 * v['unedited']['strict_memorized_validation']:.1f} -> "
            f"{100 * v['kfac']['strict_memorized_validation']:.1f} | "
            f"{100 * v['unedited']['strict_canaries']:.1f} -> "
            f"{100 * v['kfac']['strict_canaries']:.1f} |"
        )
    return table + "\n".join(lines) + "\n"


def run_demo_seeds(
    preset: str | DemoConfig,
    seeds: Sequence[int],
    out: str,
    mesh=None,
    rules=None,
    retrain: bool = False,
    log: Callable[[str], None] | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run the LM demo once per seed under OUT/seed-<s>/ and aggregate (see module doc)."""
    from kfac_mem.demo.pipeline import run_demo

    config = demo_config(preset) if isinstance(preset, str) else preset
    return run_seeds(
        seeds,
        lambda s, directory: run_demo(
            seeded(config, s), directory, mesh, rules, retrain, log or (lambda _: None)
        ),
        measures,
        out,
        experiment=f"LM demo ({config.name})",
        seed_fields=SEED_FIELDS,
        render=render,
        keep=_keep,
        command=command,
        extra={"preset": config.name},
        log=log,
    )
