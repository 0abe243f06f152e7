"""The Table-1 comparison repeated over seeds (`kfac-mem compare --seeds 0-4`).

A seed replaces every seed of the comparison: BalancedSubnet's score initialization and forget /
retain batch order (`BSNConfig.seed`) and the relearning stress test's batch order
(`StressOptions.seed`); with one eigen run per seed (`eigen` a function of the seed; on the
command line `kfac-mem compare --eigen` with `{seed}` in it, each run from `kfac-mem collect --seed
S`), the sampled labels of the K-FAC factors too. The sets and the matching target are the same for every seed.
Aggregation is the project's one multi-seed mechanism (`kfac_mem.experiments.seeds`;
docs/design.md §3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from kfac_mem.baselines.compare import CompareOptions, CompareSets, compare
from kfac_mem.experiments.seeds import render_table, run_seeds

__all__ = ["SEED_FIELDS", "measures", "run_compare_seeds", "seeded"]

SEED_FIELDS = ("bsn.seed", "stress.seed", "eigen (when given per seed)")
MEASURES = ("strict", "loose", "mean_distance")


def seeded(options: CompareOptions, seed: int) -> CompareOptions:
    """`options` with BSN's and the stress tests' seeds set to `seed`."""
    stress = None if options.stress is None else dataclasses.replace(options.stress, seed=seed)
    return dataclasses.replace(
        options, bsn=dataclasses.replace(options.bsn, seed=seed), stress=stress
    )


def measures(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one seed's comparison aggregated across seeds: per method the recitation
    (strict, loose, mean d/L) per memorized set, perplexity, nDCG@10, whether it matched the
    target (0/1) and its knob; the paired differences (first − second method) per set."""
    methods = {}
    for name, r in results["methods"].items():
        setting = r.get("setting") or {}
        knob = {k: setting[k] for k in ("rho", "drop", "ratio") if k in setting}
        methods[name] = {
            "recitation": {s: {m: v[m] for m in MEASURES} for s, v in r["recitation"].items()},
            "perplexity": r["perplexity"],
            "ndcg": r["ndcg"],
            **({} if r.get("matched") is None else {"matched": float(r["matched"])}),
            **knob,
        }
    differences = {
        pair: {s: {m: t[m]["difference"] for m in MEASURES if m in t} for s, t in by_set.items()}
        for pair, by_set in results.get("paired", {}).items()
    }
    return {"methods": methods, "differences": differences}


def _scale(path: tuple[str, ...]) -> float:
    return 100.0 if path[-1] in ("strict", "loose", "matched") else 1.0


def render(result: dict[str, Any]) -> str:
    intro = (
        f"Command: `{result['command']}`. Each seed reruns BalancedSubnet (score initialization, "
        "batch order), the relearning stress test's batch order and, with an eigen run per seed, "
        "K-FAC on that seed's factors; the sets and the perplexity target are the same. Mean over "
        "seeds with the Student-t 95% interval across seeds and the standard deviation; strict / "
        "loose recitation, `matched` and the paired differences of strict and loose in %."
    )
    return render_table(result, f"Comparison over seeds {result['seeds']}", intro, _scale)


def run_compare_seeds(
    model,
    eigen: Any | Callable[[int], Any],
    sets: CompareSets,
    options: CompareOptions,
    seeds: Sequence[int],
    out: str,
    write: Callable[[dict[str, Any], dict[str, Any], str], None],
    log: Callable[[str], None] | None = print,
    command: str = "",
) -> dict[str, Any]:
    """`compare` once per seed and the aggregate across seeds (see module doc).

    Args:
      model, sets, options: as for `compare`; each seed runs `compare` with `seeded(options, s)`.
      eigen: an eigen run shared by every seed, a function seed -> eigen run, or None.
      write: (results, params, directory) -> None writes one seed's outputs, `results.json`
        among them (the CLI's writer), so a rerun reads finished seeds back.
      out: the multi-seed directory (OUT/seed-<s>/, OUT/seeds.json, OUT/seeds.md).
    """

    def run_one(seed: int, directory: str) -> dict[str, Any]:
        run = eigen(seed) if callable(eigen) else eigen
        results = compare(model, run, sets, seeded(options, seed), log)
        params = results.pop("params")
        write(results, params, directory)
        return results

    return run_seeds(
        seeds,
        run_one,
        measures,
        out,
        experiment="compare",
        seed_fields=SEED_FIELDS,
        render=render,
        summary_file="results.json",
        command=command,
        log=log,
    )
