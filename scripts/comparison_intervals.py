"""Wilson 95% intervals and bounds on the exact McNemar p-value for a committed `kfac-mem compare`
results.json written before per-row outcomes were recorded (only each method's k / n is known).

Paired discordance is bounded by the marginals: with k_a and k_b successes out of n, the pairs
where only a succeeds range over [max(0, k_a - k_b), min(k_a, n - k_b)]; the script reports the
smallest and largest McNemar p over every joint table the marginals allow (equal when one method
is at 0% or 100%). Newer results.json files carry the exact test under "paired".

    .venv/bin/python scripts/comparison_intervals.py docs/comparison/demo/results.json
"""

import itertools
import json
import sys

from kfac_mem.stats import fmt_pct, mcnemar, proportion

LABELS = {"baseline": "unedited", "kfac": "K-FAC", "svd": "SVD", "bsn": "BSN"}


def p_range(ka: int, kb: int, n: int) -> tuple[float, float]:
    ps = []
    for a_only in range(max(0, ka - kb), min(ka, n - kb) + 1):
        both = ka - a_only
        b_only = kb - both
        a = [1] * a_only + [0] * b_only + [1] * both + [0] * (n - a_only - b_only - both)
        b = [0] * a_only + [1] * b_only + [1] * both + [0] * (n - a_only - b_only - both)
        ps.append(mcnemar(a, b)["p_value"])
    return min(ps), max(ps)


def main(path: str) -> None:
    with open(path) as f:
        r = json.load(f)
    methods = r["methods"]
    sets = [s for s in ("train", "validation", "ood") if s in r["sets"]]
    print(
        "| method | " + " | ".join(f"{s} (n = {r['sets'][s]}) strict / loose" for s in sets) + " |"
    )
    print("|---|" + "---|" * len(sets))
    for name, m in methods.items():
        cells = []
        for s in sets:
            x = m["recitation"][s]
            n = x["n"]
            cells.append(
                f"{fmt_pct(proportion(round(x['strict'] * n), n))} / "
                f"{fmt_pct(proportion(round(x['loose'] * n), n))}"
            )
        print(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    print()
    print("| comparison | set | strict k/n vs k/n | McNemar p (strict) |")
    print("|---|---|---|---|")
    for a, b in itertools.combinations([m for m in ("kfac", "bsn", "svd") if m in methods], 2):
        for s in sets:
            n = methods[a]["recitation"][s]["n"]
            ka = round(methods[a]["recitation"][s]["strict"] * n)
            kb = round(methods[b]["recitation"][s]["strict"] * n)
            lo, hi = p_range(ka, kb, n)
            p = f"{lo:.2g}" if abs(hi - lo) < 1e-12 else f"{lo:.2g} – {hi:.2g}"
            print(f"| {LABELS[a]} − {LABELS[b]} | {s} | {ka}/{n} vs {kb}/{n} | {p} |")


if __name__ == "__main__":
    main(sys.argv[1])
