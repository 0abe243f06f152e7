"""Markdown tables of a comparison: the paper's Table 1 layout and the stress tests (Table 6).

Recitation is shown like the paper: strict % / loose % / mean d/L (d/L with three decimals), each
with its 95% interval in brackets (Wilson for strict and loose, bootstrap over rows for d/L); the
header states each set's n. Method-versus-method statements come from `paired_table`: paired
differences on the same rows with their 95% intervals and exact McNemar p-values.
"""

from __future__ import annotations

from typing import Any

from kfac_mem.stats import fmt_diff, fmt_interval, fmt_pct

LABELS = {"baseline": "unedited", "kfac": "K-FAC", "svd": "SVD", "bsn": "BSN"}
SET_LABELS = {"train": "memorized train", "validation": "memorized validation", "ood": "OOD"}


def _rec(r: dict[str, Any] | None) -> str:
    if not r:
        return "–"
    ci = r.get("intervals")
    if not ci:
        return f"{100 * r['strict']:.1f} / {100 * r['loose']:.1f} / {r['mean_distance']:.3f}"
    return (
        f"{fmt_pct(ci['strict'])} / {fmt_pct(ci['loose'])} / "
        f"{fmt_interval(ci['mean_distance'], 'mean', digits=3)}"
    )


def _setting(s: dict[str, Any] | None) -> str:
    if not s:
        return "–"
    parts = []
    for k, v in s.items():
        if isinstance(v, list):
            v = "+".join(map(str, v)) if k == "projections" else ",".join(map(str, v))
        elif isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k} {v}")
    return "; ".join(parts)


def _seconds(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def table1(results: dict[str, Any]) -> str:
    """Methods × (recitation per memorized set, perplexity, nDCG@10, matched, times)."""
    sets = [n for n in SET_LABELS if n in results.get("sets", {})]
    head = (
        ["method", "setting"]
        + [f"{SET_LABELS[n]} (n = {results['sets'][n]}) strict / loose / d/L" for n in sets]
        + ["perplexity", "matched", "nDCG@10", "fit (s)", "search (s)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pre = results.get("options", {}).get("kfac_precompute_seconds")
    for name, r in results["methods"].items():
        fit = _seconds(r.get("fit_seconds"))
        if name == "kfac" and pre is not None:
            fit += f" (+{pre:.1f} factors & eigh, once)"
        matched = {None: "–", True: "yes", False: "**no**"}[r.get("matched")]
        row = (
            [LABELS.get(name, name), _setting(r.get("setting"))]
            + [_rec(r["recitation"].get(n)) for n in sets]
            + [
                f"{r['perplexity']:.3f}",
                matched,
                f"{r['ndcg']:.3f}",
                fit,
                _seconds(r.get("sweep_seconds")),
            ]
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def stress_table(results: dict[str, Any]) -> str:
    """Per method and stress set: exact-match length (unperturbed → shifted → best shift) and
    recitation and perplexity after relearning on clean text."""
    head = [
        "method",
        "set",
        "exact-match length, t = 0",
        "shifted (all t)",
        "best shift per row",
        "after relearning: strict / loose / d/L",
        "perplexity after relearning",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["methods"].items():
        stress = r.get("stress")
        if not stress:
            continue
        relearning = stress.get("relearning")
        for set_name, pos in stress["positional"].items():

            def ms(d):
                return "–" if not d else f"{d['mean']:.2f} ± {d['std']:.2f}"

            row = [
                LABELS.get(name, name),
                SET_LABELS.get(set_name, set_name),
                ms(pos["unperturbed"]),
                ms(pos.get("perturbed")),
                ms(pos.get("max_over_shifts")),
                _rec(relearning["recitation"].get(set_name)) if relearning else "–",
                f"{relearning['perplexity']:.3f}" if relearning else "–",
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_table(results: dict[str, Any]) -> str:
    """Per pair of methods and memorized set: strict and loose differences (first − second, in
    percentage points) with 95% intervals and exact McNemar p, and the d/L difference."""
    head = ["comparison", "set", "n", "Δ strict (pp)", "Δ loose (pp)", "Δ mean d/L"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, sets in (results.get("paired") or {}).items():
        a, b = key.split("_vs_")
        for s, t in sets.items():
            lines.append(
                f"| {LABELS.get(a, a)} − {LABELS.get(b, b)} | {SET_LABELS.get(s, s)} | "
                f"{t['strict']['n']} | {fmt_diff(t['strict'])} | {fmt_diff(t['loose'])} | "
                f"{fmt_diff(t['mean_distance'], 1.0, 3)} |"
            )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """Both tables with the matching target and the stress settings."""
    t = results["target"]
    o = results.get("options", {})
    stress = o.get("stress") or {}
    parts = [
        f"Target perplexity {t['perplexity']:.3f} = {t['ratio']:.3f} × unedited "
        f"{t['baseline_perplexity']:.3f}; matched = within ±{100 * t['tolerance']:.1f}%.",
        "",
        "Rates in %, 95% intervals in brackets.",
        "",
        table1(results),
    ]
    if results.get("paired"):
        parts += [
            "",
            "Paired tests on the same rows (first − second; 95% interval; exact McNemar p):",
            "",
            paired_table(results),
        ]
    if any(r.get("stress") for r in results["methods"].values()):
        parts += [
            "",
            f"Stress tests: prefix shift mode `{stress.get('shift_mode')}`, shifts "
            f"{stress.get('shifts')}; relearning {stress.get('relearn_steps')} AdamW steps at "
            f"lr {stress.get('relearn_learning_rate')} on clean retain text.",
            "",
            stress_table(results),
        ]
    return "\n".join(parts)
