"""Audit columns for docs/comparison.md: several `kfac-mem audit` runs of one model's edits, side
by side, with the paired tests between methods.

    .venv/bin/python scripts/audit_table.py unedited=runs/audit-demo/unedited kfac=runs/audit-demo/kfac \
        svd=runs/audit-demo/svd bsn=runs/audit-demo/bsn   (scripts/audit_compare.sh runs this)

Per method and memorized set: extraction by any attack (exact and loose, Wilson 95%), the
strongest single attack, log p(true suffix) edited − unedited, membership inference (min-k% AUC
with its bootstrap interval, and the best TPR at 1% FPR), and recitation after relearning on
clean text and on a disjoint memorized subset (the last checkpoint). Then, for every pair of
methods, exact McNemar on the same rows: on "exact, any attack" from the per-example outcomes
(examples/<set>.jsonl); on relearning (at the last checkpoint both audits have), where per-example outcomes are not kept, the bounds over
every pairing the two rates allow (`stats.mcnemar_bounds`; exact when a method is at 0 or n).
Audits are paired only when they read the same memorized sets (same rows).
"""

import itertools
import json
import os
import sys

import yaml

from kfac_mem.stats import fmt_interval, fmt_pct, mcnemar, mcnemar_bounds

LABELS = {"kfac": "K-FAC", "svd": "SVD", "bsn": "BSN"}


def load(path: str) -> dict:
    with open(os.path.join(path, "results.json")) as f:
        r = json.load(f)
    with open(os.path.join(path, "config.yaml")) as f:
        r["memorized_files"] = yaml.safe_load(f)["flags"]["memorized"]
    r["any_exact"] = {}
    for name in r["sets"]:
        with open(os.path.join(path, "examples", f"{name}.jsonl")) as f:
            r["any_exact"][name] = [json.loads(line)["any_attack_exact"] for line in f]
    return r


def curve(r: dict, condition: str) -> dict[int, dict]:
    """Relearning checkpoints of one condition: step -> recitation per set ({} when not run)."""
    points = r.get("relearning", {}).get(condition, {}).get("curve", [])
    return {p["step"]: p["recitation"] for p in points}


def p_text(lo: float, hi: float) -> str:
    return f"{lo:.2g}" if abs(hi - lo) <= 1e-12 * max(hi, 1e-300) else f"{lo:.2g} – {hi:.2g}"


def main(pairs: list[str]) -> None:
    runs = {}
    for pair in pairs:
        label, _, path = pair.partition("=")
        runs[LABELS.get(label, label)] = load(path)
    sets = list(next(iter(runs.values()))["sets"])
    print(
        "| method | set | exact, any attack | loose, any attack | strongest attack | "
        "log p(true suffix), edited − unedited (nats) | min-k% AUC | TPR at 1% FPR (best score) | "
        "exact after clean relearning | exact after memorized-subset relearning |"
    )
    print("|---" * 10 + "|")
    for label, r in runs.items():
        for name in sets:
            res = r["sets"][name]
            aa = res["any_attack"]
            best = aa["strongest"]
            top = aa["by_attack_exact"].get(best) if best else None
            strongest = f"{best}: {fmt_pct(top)}" if top and top["k"] else "none extracts"
            logp = fmt_interval(res["beam"]["logp_difference"], "difference", 1.0, 1)
            m = res["membership"]
            auc = fmt_interval(m["min_k"]["auc"], "value", 1.0, 3)
            score, tpr = max(
                ((k, m[k]["tpr_at_1pct_fpr"]) for k in ("loss", "zlib", "min_k")),
                key=lambda kv: kv[1]["rate"],
            )
            cells = []
            for cond in ("clean", "memorized_subset"):
                points = curve(r, cond)
                last = max(points, default=None)
                exact = points[last][name]["exact"] if points else None
                cells.append(f"{fmt_pct(exact)} (n = {exact['n']}, {last} steps)" if exact else "–")
            print(
                f"| {label} | {name} (n = {res['n']}) | {fmt_pct(aa['exact'])} | "
                f"{fmt_pct(aa['loose'])} | {strongest} | {logp} | {auc} | "
                f"{fmt_pct(tpr)} ({score}) | {cells[0]} | {cells[1]} |"
            )
    print()
    print(
        "| comparison | set | exact, any attack: k/n vs k/n, McNemar p | "
        "memorized-subset relearning: k/n vs k/n, McNemar p |"
    )
    print("|---|---|---|---|")
    for (la, a), (lb, b) in itertools.combinations(runs.items(), 2):
        if a["memorized_files"] != b["memorized_files"]:
            continue
        ca, cb = curve(a, "memorized_subset"), curve(b, "memorized_subset")
        last = max(set(ca) & set(cb) - {0}, default=None)  # the last checkpoint both have
        for name in sets:
            x, y = a["any_exact"][name], b["any_exact"][name]
            test = mcnemar(x, y)
            cells = [f"{sum(x)}/{len(x)} vs {sum(y)}/{len(y)}, p = {test['p_value']:.2g}"]
            ea = ca[last][name]["exact"] if last is not None else None
            eb = cb[last][name]["exact"] if last is not None else None
            if ea and ea["n"] == eb["n"]:
                n, ka, kb = ea["n"], ea["k"], eb["k"]
                p = p_text(*mcnemar_bounds(ka, kb, n))
                cells.append(f"{ka}/{n} vs {kb}/{n} after {last} steps, p = {p}")
            else:
                cells.append("–")
            print(f"| {la} − {lb} | {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main(sys.argv[1:])
