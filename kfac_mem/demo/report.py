"""The demo's report: report.md (tables), figures/*.png and summary.json."""

from __future__ import annotations

import datetime
import os
from typing import Any

import jax
import numpy as np

from kfac_mem.analysis.findings import fmt_effect, fmt_matrices
from kfac_mem.atomic import write_json_atomic, write_text_atomic
from kfac_mem.demo.config import DemoConfig
from kfac_mem.demo.skills import GROUPS
from kfac_mem.manifest import run_manifest
from kfac_mem.stats import (
    bootstrap_ratio,
    compare_paired,
    fmt_diff,
    fmt_interval,
    fmt_pct,
    proportion,
    wilson,
)

VARIANTS = {
    "unedited": "unedited",
    "kfac": "K-FAC edit",
    "svd": "SVD (matched ppl)",
    "random_basis": "random basis (same mask)",
}
SETS = {
    "memorized_train": "memorized (train split)",
    "memorized_validation": "memorized (held out)",
    "canaries": "canaries (OOD)",
}


def _pct(x: float) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def _ci(r: dict[str, Any], key: str) -> dict[str, Any]:
    """The 95% interval of measure `key` of a recitation result ({} when it has none)."""
    return (r.get("intervals") or {}).get(key) or {}


def _retention(after: dict[str, Any], before: dict[str, Any], group: str) -> dict[str, Any]:
    """Retention after / before of one skill group over the same items, bootstrap 95% interval."""
    return bootstrap_ratio(after["skill_outcomes"][group], before["skill_outcomes"][group])


def paired_tests(results: dict[str, Any]) -> dict[str, Any]:
    """K-FAC against every other variant on the same examples: strict recitation per memorized
    set and accuracy per skill group, as paired differences (K-FAC − other) with 95% intervals
    and exact McNemar (`stats.compare_paired`)."""
    kfac = results["kfac"]
    out: dict[str, Any] = {}
    for name, r in results.items():
        if name == "kfac":
            continue
        tests = {}
        for s in SETS:
            a, b = kfac["recitation"][s].get("outcomes"), r["recitation"][s].get("outcomes")
            if a and b:
                tests[f"strict_{s}"] = compare_paired(a["strict"], b["strict"])
        for g in GROUPS:
            tests[f"accuracy_{g}"] = compare_paired(
                kfac["skill_outcomes"][g], r["skill_outcomes"][g]
            )
        out[f"kfac_vs_{name}"] = tests
    return out


def _pct_name(x: float) -> str:
    return f"{round(100 * x)}pct"


def demo_targets(
    c: DemoConfig,
    strict_before: float,
    strict_after: float,
    ppl_before: float,
    ppl_after: float,
    retention: dict[str, float],
) -> dict[str, bool]:
    """The demo's targets, from the config that also sets the choice rule's limits
    (`DemoConfig.choice_rule`): recitation of held-out memorized windows at least
    `min_recitation_before` before and at most `max_recitation_after` after the edit, perplexity
    at most `1 + max_ppl_increase` times the unedited model's, and every protected skill group
    keeping at least `min_retention` of its accuracy. Keys name the thresholds in percent."""
    return {
        f"strict_before_at_least_{_pct_name(c.min_recitation_before)}": (
            strict_before >= c.min_recitation_before
        ),
        f"strict_after_at_most_{_pct_name(c.max_recitation_after)}": (
            strict_after <= c.max_recitation_after
        ),
        f"perplexity_increase_at_most_{_pct_name(c.max_ppl_increase)}": (
            ppl_after <= (1 + c.max_ppl_increase) * ppl_before
        ),
        **{
            f"{g}_retention_at_least_{_pct_name(c.min_retention)}": retention[g] >= c.min_retention
            for g in c.protected_groups
        },
    }


def _strict_with_ci(rate: float, n: int) -> str:
    if n == 0 or rate != rate:
        return "n/a"
    lo, hi = wilson(round(rate * n), n)
    return f"{_pct(rate)} [{_pct(lo)}, {_pct(hi)}]"


def _figures(out_dir: str, rows, chosen, results) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(
            r["ppl_ratio"],
            100 * r["strict_memorized_train"],
            s=20 + 60 * (len(r["projections"]) - 1),
            c=[[r["rho"], 0.2, 1 - r["rho"]]],
            alpha=0.7,
        )
    ax.scatter(
        chosen["ppl_ratio"],
        100 * chosen["strict_memorized_train"],
        marker="*",
        s=300,
        c="gold",
        edgecolors="k",
        label="chosen",
    )
    ax.set_xlabel("held-out perplexity / unedited (selection split)")
    ax.set_ylabel("strict recitation, memorized train split (%)")
    ax.set_title("Edit sweep (colour: ρ, blue 0 -> red 1; size: matrices)")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(fig_dir, "sweep.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        vals = [100 * results[name]["recitation"][s]["strict"] for s in SETS]
        axes[0].bar(np.arange(len(SETS)) + k * width, vals, width, label=VARIANTS.get(name, name))
        base = results["unedited"]["skills"]
        ret = [100 * results[name]["skills"][g] / base[g] if base[g] else np.nan for g in GROUPS]
        axes[1].bar(np.arange(len(GROUPS)) + k * width, ret, width, label=VARIANTS.get(name, name))
    axes[0].set_xticks(np.arange(len(SETS)) + 0.4 - width / 2, list(SETS.values()), fontsize=8)
    axes[0].set_ylabel("strict recitation (%)")
    axes[0].set_title("What the edit removes")
    axes[1].set_xticks(np.arange(len(GROUPS)) + 0.4 - width / 2, GROUPS, fontsize=8)
    axes[1].axhline(100, color="k", lw=0.5)
    axes[1].set_ylabel("accuracy after / before (%)")
    axes[1].set_title("What it keeps (task-group retention)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(fig_dir, "removal_and_retention.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_report(
    out_dir: str,
    c: DemoConfig,
    provenance: dict,
    mem,
    can,
    factors,
    rows,
    chosen,
    results: dict[str, Any],
    analysis: dict[str, Any],
    seconds: dict[str, float],
    edit_report: list[dict],
) -> dict[str, Any]:
    """Write report.md, figures/*.png and summary.json of a demo run; returns the summary.

    `results` maps each variant ("unedited", "kfac", "svd", "random_basis") to its recitation per
    memorized set, perplexity, nDCG and skill outcomes on the report splits; `rows` is the sweep on
    the selection splits, `chosen` its choice; `mem` / `can` the mined memorized and canary sets.
    """
    base, kfac = results["unedited"], results["kfac"]
    retention = {
        g: (kfac["skills"][g] / base["skills"][g] if base["skills"][g] else float("nan"))
        for g in GROUPS
    }
    retention_ci = {
        name: {g: _retention(r, base, g) for g in GROUPS}
        for name, r in results.items()
        if name != "unedited"
    }
    paired = paired_tests(results)
    held = "memorized_validation"
    strict_before = base["recitation"][held]["strict"]
    strict_after = kfac["recitation"][held]["strict"]
    ppl_before = base["perplexity"]["perplexity"]
    ppl_after = kfac["perplexity"]["perplexity"]
    targets = demo_targets(c, strict_before, strict_after, ppl_before, ppl_after, retention)
    summary = {
        "preset": c.name,
        "recitation_strict_before": strict_before,
        "recitation_strict_after": strict_after,
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "retention": retention,
        "intervals": {
            "recitation_strict_before": _ci(base["recitation"][held], "strict"),
            "recitation_strict_after": _ci(kfac["recitation"][held], "strict"),
            "retention": retention_ci["kfac"],
        },
        "paired_tests": paired,
        "chosen": {k: chosen[k] for k in ("layers", "projections", "rho", "feasible")},
        "svd_drop": chosen.get("svd_drop"),
        "targets": targets,
        "all_targets_met": all(targets.values()),
        "table1": _table1_summary(results, retention_ci),
        "mined": {"memorized": mem["stats"], "canaries": can["stats"]},
        "factors": {
            "n_tokens": factors.n_tokens,
            "mode": factors.mode,
            "corpus": factors.metadata["corpus"]["sources"],
        },
        "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
        "devices": {"count": jax.device_count(), "platform": jax.devices()[0].platform},
        "manifest": run_manifest({"seed": c.seed, "split_seed": c.split_seed}),
        "provenance": provenance,
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    figures = _figures(out_dir, rows, chosen, results)
    lines = [
        *_outcome_lines(c, results, paired, retention_ci, chosen, targets),
        *_table1_lines(results, chosen),
        *_task_group_lines(results, retention_ci),
        *_paired_lines(paired),
        *_sweep_lines(rows, chosen, mem),
        *_edited_matrix_lines(edit_report),
        *_example_lines(kfac),
        *_analysis_lines(analysis),
        *_run_lines(seconds, summary, factors, provenance),
    ]
    write_text_atomic(os.path.join(out_dir, "report.md"), "\n".join(lines))
    summary["figures"] = [os.path.relpath(p, out_dir) for p in figures]
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    return summary


def _table1_summary(results: dict[str, Any], retention_ci: dict[str, Any]) -> dict[str, Any]:
    """summary.json `table1`: per variant, recitation per set with intervals, perplexity, nDCG,
    skill accuracies with n and intervals, and (edited variants) retention."""
    return {
        name: {
            **{
                s: {
                    **{k: r["recitation"][s][k] for k in ("n", "strict", "loose", "mean_distance")},
                    "intervals": r["recitation"][s].get("intervals", {}),
                }
                for s in SETS
            },
            "perplexity": r["perplexity"]["perplexity"],
            "ndcg@10": r["ndcg"],
            "skills": r["skills"],
            "skill_n": {g: len(v) for g, v in r["skill_outcomes"].items()},
            "skill_intervals": {g: proportion(v) for g, v in r["skill_outcomes"].items()},
            **({"retention": retention_ci[name]} if name in retention_ci else {}),
        }
        for name, r in results.items()
    }


def _outcome_lines(c: DemoConfig, results, paired, retention_ci, chosen, targets) -> list[str]:
    """The title and the outcome: recitation, perplexity, retention, the chosen edit, targets."""
    base, kfac = results["unedited"], results["kfac"]
    held = "memorized_validation"
    ppl_before = base["perplexity"]["perplexity"]
    ppl_after = kfac["perplexity"]["perplexity"]
    return [
        f"# kfac-mem demo report ({c.name})",
        "",
        "K-FAC curvature-mass edit of a small OLMo-2-architecture model trained on real text with "
        "memorized passages, random-word canaries and four skills. Layers and ρ were chosen on the "
        "selection splits only; every number below is on the report splits.",
        "",
        "## Outcome",
        "",
        "Every rate is a percentage with its 95% interval in brackets (Wilson for shares, seeded "
        "bootstrap over examples for means and retentions) and its n; K-FAC-versus-other "
        "statements use paired tests on the same examples (difference with its 95% interval, "
        "exact McNemar p).",
        "",
        f"- strict recitation of held-out memorized windows (n = "
        f"{base['recitation'][held]['n']}): **{fmt_pct(_ci(base['recitation'][held], 'strict'))}"
        f"% -> {fmt_pct(_ci(kfac['recitation'][held], 'strict'))}%**; paired difference "
        "(percentage points) "
        + (
            f"{fmt_diff(paired['kfac_vs_unedited'][f'strict_{held}'])}"
            if f"strict_{held}" in paired["kfac_vs_unedited"]
            else "n/a"
        ),
        f"- held-out perplexity: **{ppl_before:.2f} -> {ppl_after:.2f}** "
        f"({100 * (ppl_after / ppl_before - 1):+.1f}%)",
        "- task-group retention (after / before, same items): "
        + ", ".join(
            f"{g} {fmt_interval(retention_ci['kfac'][g], 'ratio', 100.0)}% "
            f"(n = {retention_ci['kfac'][g]['n']})"
            for g in GROUPS
        ),
        f"- chosen edit: layers {chosen['layers']}, {'+'.join(chosen['projections'])}, ρ = {chosen['rho']}"
        + (
            ""
            if chosen["feasible"]
            else " (no grid point met the selection constraints; this is the least-violating one)"
        ),
        "- targets: "
        + ", ".join(f"{k} {'met' if v else '**NOT met**'}" for k, v in targets.items()),
        "",
    ]


def _table1_lines(results, chosen) -> list[str]:
    """Table 1 layout: recitation per set (strict / loose / mean d/L), perplexity, nDCG."""
    base = results["unedited"]
    lines = [
        "## Table 1 layout (report splits)",
        "",
        "| model | "
        + " | ".join(
            f"{v} (n = {base['recitation'][s]['n']}) strict / loose / mean d/L"
            for s, v in SETS.items()
        )
        + " | perplexity | nDCG@10 |",
        "|---|" + "---|" * (len(SETS) + 2),
    ]
    for name, r in results.items():
        cells = [
            f"{fmt_pct(_ci(r['recitation'][s], 'strict'))} / "
            f"{fmt_pct(_ci(r['recitation'][s], 'loose'))} / "
            f"{fmt_interval(_ci(r['recitation'][s], 'mean_distance'), 'mean', digits=3)}"
            for s in SETS
        ]
        lines.append(
            f"| {VARIANTS.get(name, name)} | "
            + " | ".join(cells)
            + f" | {r['perplexity']['perplexity']:.2f} | {r['ndcg']:.3f} |"
        )
    return [
        *lines,
        "",
        f"SVD drops {100 * (chosen.get('svd_drop') or 0):.0f}% of the bottom singular components of "
        "the same matrices (closest selection perplexity to the K-FAC edit); the random-basis "
        "control keeps the K-FAC edit's number of components in Haar-random bases.",
        "",
    ]


def _task_group_lines(results, retention_ci) -> list[str]:
    """Accuracy per skill group and variant, with retention in parentheses."""
    base = results["unedited"]
    lines = [
        "## Task groups (accuracy, report split; retention = after / before, in parentheses)",
        "",
        "| group | n | " + " | ".join(VARIANTS.get(n, n) for n in results) + " |",
        "|---|---|" + "---|" * len(results),
    ]
    for g in GROUPS:
        cells = []
        for name, r in results.items():
            cells.append(
                fmt_pct(proportion(r["skill_outcomes"][g]))
                + (
                    ""
                    if name == "unedited"
                    else f" ({fmt_interval(retention_ci[name][g], 'ratio', 100.0)})"
                )
            )
        lines.append(f"| {g} | {len(base['skill_outcomes'][g])} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _paired_lines(paired) -> list[str]:
    """K-FAC against every other variant on the same examples."""
    lines = [
        "## Paired tests (K-FAC − other, same examples; percentage points, 95% interval, "
        "exact McNemar p)",
        "",
        "| measure | n | " + " | ".join(f"vs {VARIANTS.get(n[8:], n[8:])}" for n in paired) + " |",
        "|---|---|" + "---|" * len(paired),
    ]
    for key in next(iter(paired.values()), {}):
        n = next(iter(paired.values()))[key]["n"]
        label = f"strict, {SETS[key[7:]]}" if key.startswith("strict_") else f"accuracy, {key[9:]}"
        lines.append(
            f"| {label} | {n} | " + " | ".join(fmt_diff(t[key]) for t in paired.values()) + " |"
        )
    return [*lines, "", "![removal and retention](figures/removal_and_retention.png)", ""]


def _sweep_lines(rows, chosen, mem) -> list[str]:
    """The sweep on the selection splits, the chosen row marked."""
    lines = [
        "## Sweep (selection splits)",
        "",
        f"Selection-split point estimates; strict recitation of the memorized train split "
        f"(n = {len(mem['train'])}) with its Wilson 95% interval.",
        "",
        "| layers | matrices | ρ | strict (mem. train) | ppl ratio | "
        + " | ".join(f"{g} ret." for g in GROUPS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(GROUPS),
    ]
    for r in rows:
        mark = (
            " **(chosen)**"
            if (r["layers"], r["projections"], r["rho"])
            == (chosen["layers"], chosen["projections"], chosen["rho"])
            else ""
        )
        lines.append(
            f"| {r['layers']}{mark} | {'+'.join(r['projections'])} | {r['rho']} | "
            f"{_strict_with_ci(r['strict_memorized_train'], len(mem['train']))} | "
            f"{r['ppl_ratio']:.3f} | " + " | ".join(_pct(r["retention"][g]) for g in GROUPS) + " |"
        )
    return [*lines, "", "![sweep](figures/sweep.png)", ""]


def _edited_matrix_lines(edit_report) -> list[str]:
    """Per edited matrix: kept components and their share, kept mass, relative change, rank."""
    lines = [
        "## Edited matrices",
        "",
        "| matrix | kept components | kept share | kept mass | ‖ΔW‖/‖W‖ | rank |",
        "|---|---|---|---|---|---|",
    ]
    for row in edit_report:
        lines.append(
            f"| {row['id']} | {row['kept']} / {row['components']} | "
            f"{_pct(row['kept'] / row['components'])}% | "
            f"{_pct(row.get('kept_mass'))}% | {row['rel_delta_fro']:.3f} | "
            f"{row.get('rank', 'n/a')} |"
        )
    return lines


def _example_lines(kfac) -> list[str]:
    """What the edited model says after three held-out memorized prefixes."""
    examples = kfac["recitation"]["memorized_validation"].get("rows", [])[:3]
    if not examples:
        return []
    lines = ["", "## What the edited model now says (held-out memorized prefixes)", ""]
    for ex in examples:
        lines += [
            f"- prefix: `{ex.get('prefix_text', '')[-120:]}`",
            f"  - memorized: `{ex.get('suffix_text', '')}`",
            f"  - now: `{ex.get('generated_text', '')}`",
        ]
    return lines


def _analysis_lines(analysis) -> list[str]:
    """The analyzer's findings (the full report is analysis/report.md)."""
    lines = [
        "",
        "## Curvature analysis",
        "",
        (
            "The analyzer's full report (spectra, per-example sharpness, band ratios, band "
            "ablation) is in [analysis/report.md](analysis/report.md)."
            if analysis
            else "Not run in this configuration (`DemoConfig.analysis` is off)."
        ),
        "",
    ]
    findings = analysis.get("findings", [])
    if findings:
        lines += [
            "Each prediction of the sharp-vs-flat picture, checked against clean held-out text "
            "in every analyzed matrix (measured, not assumed):",
            "",
            "Effect = set − clean pooled over matrices with its bootstrap 95% interval over "
            "examples (see the analysis report); the verdict follows the interval.",
            "",
            "| set | prediction | n (set / clean) | effect [95%] | matrices | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for f in findings:
            lines.append(
                f"| {f['set']} | {f['claim']} | {f.get('n_set', '–')} / {f.get('n_clean', '–')} "
                f"| {fmt_effect(f)} | {fmt_matrices(f)} | {f['verdict']} |"
            )
    return lines


def _run_lines(seconds, summary, factors, provenance) -> list[str]:
    """Stage times, factors and the model's provenance."""
    return [
        "",
        "## Run",
        "",
        f"- stage seconds: {seconds} (total {summary['total_seconds']} s on "
        f"{summary['devices']['count']} {summary['devices']['platform']} device(s))",
        f"- factors: {factors.n_tokens:,} positions, {factors.mode} labels, corpus "
        f"{factors.metadata['corpus']['sources']}",
        f"- model provenance: `{provenance.get('command')}`, seed {provenance.get('seed')}",
        "",
    ]
