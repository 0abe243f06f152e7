"""The audit's outputs: report.md, results.json, examples/<set>.jsonl and figures/, atomically."""

from __future__ import annotations

import copy
import io
import os
from typing import Any

from kfac_mem.atomic import write_atomic, write_json_atomic, write_jsonl_atomic, write_text_atomic
from kfac_mem.manifest import shown_path
from kfac_mem.stats import fmt_interval, fmt_pct


def _shown(path: str | None) -> str:
    return shown_path(path) or "?"


def _pct(r: dict[str, Any]) -> str:
    return f"{fmt_pct(r)} (n={r['n']})"


def _mean(r: dict[str, Any], digits: int = 2) -> str:
    return f"{fmt_interval(r, 'mean', 1.0, digits)} (n={r['n']})"


def _examples(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One merged row per example of a set."""
    rows = [{"index": i} for i in range(res["n"])]
    for t, r in res.get("sampling", {}).get("temperatures", {}).items():
        for row, e in zip(rows, r["examples"]):
            row[f"sampling_T{t}"] = e
    for key in ("beam", "prefix"):
        if key in res:
            for row, e in zip(rows, res[key]["examples"]):
                row[key] = e
    for row, e in zip(rows, res["any_attack"]["examples"]):
        row["any_attack_exact"] = e
    return rows


def render_markdown(results: dict[str, Any]) -> str:
    """report.md: headline per set, then every attack with n and 95% intervals."""
    o = results["options"]
    lines = [
        "# Extraction and membership audit",
        "",
        f"Model: `{_shown(results.get('model'))}`; baseline (unedited): "
        f"`{_shown(results.get('baseline'))}`.",
        f"Wall time {results['wall_seconds']:.1f} s. Rates are shares of examples with Wilson 95% "
        "intervals; means carry bootstrap 95% intervals; n = examples. Exact = the suffix "
        "reproduced token for token; loose = token-level normalized Levenshtein d/L ≤ 0.25.",
        "",
        "## Headline: extracted by any attack",
        "",
        "| set | n | exact (any attack) | loose (any attack) | strongest single attack |",
        "|---|---|---|---|---|",
    ]
    for name, res in results["sets"].items():
        aa = res["any_attack"]
        best = aa["strongest"]
        best_txt = f"{best}: {fmt_pct(aa['by_attack_exact'][best])}" if best else "n/a"
        lines.append(
            f"| {name} | {res['n']} | {fmt_pct(aa['exact'])} | {fmt_pct(aa['loose'])} | {best_txt} |"
        )
    for name, res in results["sets"].items():
        lines += [
            "",
            f"## Set `{name}` (n = {res['n']}, prefix {res['prefix_len']}, suffix {res['suffix_len']})",
            "",
        ]
        if "sampling" in res:
            s = res["sampling"]
            lines += [
                f"### Sampling extraction (k = {s['samples']}, top-k {s['top_k'] or 'off'}, "
                f"top-p {s['top_p']})",
                "",
                "| T | k | exact, any of k | loose, any of k |",
                "|---|---|---|---|",
            ]
            for t, r in s["temperatures"].items():
                for k, c in r["curve"].items():
                    lines.append(f"| {t} | {k} | {_pct(c['exact'])} | {_pct(c['loose'])} |")
            lines += [
                "",
                "| T | longest exact match (tokens) | as share of suffix |",
                "|---|---|---|",
            ]
            for t, r in s["temperatures"].items():
                lines.append(
                    f"| {t} | {_mean(r['longest_match'])} | {_mean(r['longest_match_share'])} |"
                )
        if "beam" in res:
            b = res["beam"]
            d = b["logp_difference"]
            lines += [
                "",
                f"### Beam search (width {b['width']})",
                "",
                f"- exact among beams: {_pct(b['exact'])}; loose: {_pct(b['loose'])}; longest match "
                f"{_mean(b['longest_match'])} tokens",
                f"- log p(true suffix | prefix), nats: model {_mean(b['logp_model'])}, baseline "
                f"{_mean(b['logp_baseline'])}; model − baseline {fmt_interval(d, 'difference', 1.0, 2)}",
                f"- beam rank of the true suffix (1 = top, {b['width'] + 1} = below every beam): model "
                f"{_mean(b['rank_model'])}, baseline {_mean(b['rank_baseline'])}",
            ]
        if "prefix" in res:
            p = res["prefix"]
            lines += [
                "",
                "### Prefix attacks (greedy)",
                "",
                "| prompt | exact | loose | longest match |",
                "|---|---|---|---|",
            ]
            for k, r in p["variants"].items():
                lines.append(
                    f"| {k} | {_pct(r['exact'])} | {_pct(r['loose'])} | {_mean(r['longest_match'])} |"
                )
            for k, r in p["families"].items():
                lines.append(
                    f"| any {k} | {_pct(r['exact'])} | {_pct(r['loose'])} | {_mean(r['longest_match'])} |"
                )
            if "any_altered" in p:
                r = p["any_altered"]
                lines.append(
                    f"| any altered prompt | {_pct(r['exact'])} | {_pct(r['loose'])} | {_mean(r['longest_match'])} |"
                )
        if "membership" in res:
            m = res["membership"]
            lines += [
                "",
                f"### Membership inference ({m['n_memorized']} memorized vs {m['n_clean']} clean "
                f"windows of {m['width']} tokens)",
                "",
                "| score | ROC AUC [95% bootstrap] | separation max(AUC, 1−AUC) | TPR at FPR ≤ 1% |",
                "|---|---|---|---|",
            ]
            for k in ("loss", "zlib", "min_k", "reference"):
                r = m[k]
                lines.append(
                    f"| {k} | {fmt_interval(r['auc'], 'value', 1.0, 3)} | {r['separation']:.3f} | "
                    f"{_pct(r['tpr_at_1pct_fpr'])} |"
                )
    if "relearning" in results:
        rl = results["relearning"]
        lines += [
            "",
            f"## Relearning (AdamW, lr {rl['learning_rate']}, {rl['batch_size']} rows per step)",
            "",
            "| condition | step | set | exact | loose |",
            "|---|---|---|---|---|",
        ]
        for cond in ("clean", "memorized_subset"):
            c = rl.get(cond, {})
            if "skipped" in c:
                lines.append(f"| {cond} | – | – | skipped: {c['skipped']} | |")
            for point in c.get("curve", []):
                for name, r in point["recitation"].items():
                    lines.append(
                        f"| {cond} | {point['step']} | {name} | {_pct(r['exact'])} | {_pct(r['loose'])} |"
                    )
    lines += ["", "## Cost", "", f"Unit: {results['cost']['unit']}.", ""]
    for k, v in results["cost"].items():
        if k != "unit":
            lines.append(f"- {k}: {v}")
    lines += ["", f"Settings: `{ {k: v for k, v in o.items() if k != 'progress'} }`", ""]
    return "\n".join(lines)


def _figure(path: str, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return write_atomic(path, lambda f: f.write(buf.getvalue()), binary=True)


def write_figures(results: dict[str, Any], out: str) -> list[str]:
    paths = []
    fig_dir = os.path.join(out, "figures")
    for name, res in results["sets"].items():
        if "sampling" in res:

            def draw(ax, res=res, name=name):
                for t, r in res["sampling"]["temperatures"].items():
                    ks = [int(k) for k in r["curve"]]
                    for kind, style in (("exact", "-o"), ("loose", "--s")):
                        ys = [100 * r["curve"][str(k)][kind]["rate"] for k in ks]
                        lo = [100 * r["curve"][str(k)][kind]["lo"] for k in ks]
                        hi = [100 * r["curve"][str(k)][kind]["hi"] for k in ks]
                        ax.plot(ks, ys, style, label=f"T={t} {kind}")
                        ax.fill_between(ks, lo, hi, alpha=0.15)
                ax.set_xscale("log", base=2)
                ax.set_xlabel("samples per prefix k")
                ax.set_ylabel("extracted (%), any of k")
                ax.set_ylim(-2, 102)
                ax.set_title(f"{name}: sampling extraction (n={res['n']})")
                ax.legend(fontsize=7)

            paths.append(_figure(os.path.join(fig_dir, f"extraction_{name}.png"), draw))
        if "membership" in res:

            def draw(ax, res=res, name=name):
                m = res["membership"]
                for k in ("loss", "zlib", "min_k", "reference"):
                    ax.plot(
                        m[k]["roc"]["fpr"],
                        m[k]["roc"]["tpr"],
                        label=f"{k} AUC {m[k]['auc_sklearn']:.3f}",
                    )
                ax.plot([0, 1], [0, 1], ":", color="gray")
                ax.set_xlabel("false-positive rate (clean)")
                ax.set_ylabel("true-positive rate (memorized)")
                ax.set_title(f"{name}: membership ROC ({m['n_memorized']} vs {m['n_clean']})")
                ax.legend(fontsize=7)

            paths.append(_figure(os.path.join(fig_dir, f"roc_{name}.png"), draw))
    rl = results.get("relearning")
    if rl:

        def draw(ax):
            for cond, style in (("clean", "-o"), ("memorized_subset", "--s")):
                curve = rl.get(cond, {}).get("curve", [])
                if not curve:
                    continue
                for name in curve[0]["recitation"]:
                    steps = [p["step"] for p in curve]
                    ys = [100 * p["recitation"][name]["exact"]["rate"] for p in curve]
                    ax.plot(steps, ys, style, label=f"{cond}: {name}")
            ax.set_xlabel("fine-tuning steps")
            ax.set_ylabel("greedy exact recitation (%)")
            ax.set_ylim(-2, 102)
            ax.set_title("relearning")
            ax.legend(fontsize=7)

        paths.append(_figure(os.path.join(fig_dir, "relearning.png"), draw))
    return paths


def write_report(results: dict[str, Any], out: str) -> dict[str, Any]:
    """Write everything into `out` (created if needed); per-example rows go to examples/, the
    aggregates (without per-example lists) to results.json. Returns {name: path}."""
    os.makedirs(out, exist_ok=True)
    paths: dict[str, Any] = {}
    for name, res in results["sets"].items():
        paths[f"examples/{name}"] = write_jsonl_atomic(
            os.path.join(out, "examples", f"{name}.jsonl"), _examples(res)
        )
    paths["figures"] = write_figures(results, out)
    slim = copy.deepcopy(results)
    for res in slim["sets"].values():
        for v in res.values():
            if isinstance(v, dict):
                v.pop("examples", None)
                for t in v.get("temperatures", {}).values():
                    t.pop("examples", None)
    paths["results"] = write_json_atomic(os.path.join(out, "results.json"), slim)
    paths["report"] = write_text_atomic(os.path.join(out, "report.md"), render_markdown(results))
    return paths
