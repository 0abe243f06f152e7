"""Findings: the paper's claim checked against what the analyzer measured, with effect sizes.

The claim (docs/design.md §4): memorized examples are sharp and idiosyncratic and live in the population's flat
(low-Π) bands; shared skills are broad, consistent and live in the high bands. Each finding
compares one set with the clean set on one per-example measure:

* per matrix, the effect = the set's mean minus clean's mean (for activation strengths: the log
  of the ratio of means), with a seeded two-sample bootstrap 95% interval over examples;
* pooled, the mean over matrices of the per-matrix effects, each difference first divided by the
  standard deviation of that matrix's values (both sets together) so matrices weigh alike; the
  same resampled examples serve every matrix, so the pooled interval respects that one example
  is measured in all of them.

The verdict is "agrees" when the pooled interval excludes zero on the side the claim predicts,
"contradicts" when it excludes zero on the other side, "inconclusive" when it contains zero, and
"n/a" when the numbers are missing. Per matrix the same rule gives agrees_in / contradicts_in.

Magnitudes (total curvature Σ Γ̃², the top component) are divided by each example's number of
loss positions, so sets with different window lengths compare; concentration measures (top-k
share, participation ratio) and band shares are scale-free. Band activation strengths are given
in the pair-faithful K-FAC basis and with A's eigenvectors ranked by μ alone (the paper's Fig. 2).
The top-k overlap between examples is a pairwise statistic of the whole set: it is reported with
its per-matrix sign count but no interval, and its verdict is "descriptive".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from kfac_mem.stats import CONFIDENCE, N_RESAMPLES

VERDICTS = ("agrees", "contradicts", "inconclusive", "descriptive", "n/a")


def _verdict(lo: float | None, hi: float | None, direction: int) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    if lo > 0:
        return "agrees" if direction > 0 else "contradicts"
    if hi < 0:
        return "agrees" if direction < 0 else "contradicts"
    return "inconclusive"


def _f(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def effect_sizes(
    x: np.ndarray,
    c: np.ndarray,
    kind: str,
    direction: int,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Per-matrix and pooled effects of set values `x` [n_x, M] against clean values `c`
    [n_c, M] (NaN = missing example at that matrix), with bootstrap intervals.

    kind: "diff" (mean x − mean c; pooled in units of each matrix's standard deviation) or
    "logratio" (log(mean x / mean c)). Returns {"effect", "lo", "hi", "verdict", "n_set",
    "n_clean", "per_matrix": [{"effect", "lo", "hi", "verdict"}], "agrees_in",
    "contradicts_in", "of"}.
    """
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    n_x, n_c, m = x.shape[0], c.shape[0], x.shape[1]

    def stat(mx: np.ndarray, mc: np.ndarray) -> np.ndarray:
        if kind == "diff":
            return mx - mc
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(mx / mc)

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point = stat(np.nanmean(x, 0), np.nanmean(c, 0))  # [M]
        scale = np.nanstd(np.concatenate([x, c]), 0) if kind == "diff" else np.ones(m, np.float64)
        rng = np.random.default_rng(seed)
        ix = rng.integers(0, n_x, (N_RESAMPLES, n_x)) if n_x else None
        ic = rng.integers(0, n_c, (N_RESAMPLES, n_c)) if n_c else None
        if ix is None or ic is None:
            boot = np.full((N_RESAMPLES, m), np.nan)
        else:
            boot = stat(np.nanmean(x[ix], 1), np.nanmean(c[ic], 1))  # [B, M]
        q = 100 * (1 - confidence) / 2
        valid = np.isfinite(point) & (scale > 0)
        per = []
        for j in range(m):
            b = boot[:, j][np.isfinite(boot[:, j])]
            lo, hi = np.percentile(b, [q, 100 - q]) if b.size else (np.nan, np.nan)
            per.append(
                {
                    "effect": _f(point[j]),
                    "lo": _f(lo),
                    "hi": _f(hi),
                    "verdict": _verdict(_f(lo), _f(hi), direction) if valid[j] else "n/a",
                }
            )
        if valid.any():
            pooled_point = float(np.mean(point[valid] / scale[valid]))
            pooled = np.nanmean(boot[:, valid] / scale[valid], 1)
            pooled = pooled[np.isfinite(pooled)]
            plo, phi = np.percentile(pooled, [q, 100 - q]) if pooled.size else (np.nan,) * 2
        else:
            pooled_point, plo, phi = float("nan"), float("nan"), float("nan")
    verdicts = [p["verdict"] for p in per]
    return {
        "effect": _f(pooled_point),
        "lo": _f(plo),
        "hi": _f(phi),
        "verdict": _verdict(_f(plo), _f(phi), direction),
        "kind": kind if kind == "logratio" else "standardized mean difference",
        "n_set": int(n_x),
        "n_clean": int(n_c),
        "per_matrix": per,
        "agrees_in": verdicts.count("agrees"),
        "contradicts_in": verdicts.count("contradicts"),
        "of": int(sum(v != "n/a" for v in verdicts)),
    }


def _stack(values: list[np.ndarray]) -> np.ndarray:
    """[n, M] from one [n] array per matrix."""
    return np.stack([np.asarray(v, np.float64) for v in values], axis=1)


def _checks(last: int) -> list[tuple[str, Callable[[dict], np.ndarray | None], str, int]]:
    """(claim, per-example measure from a layer's `values`, kind, predicted sign of set − clean)."""

    def band(key, b):
        return lambda v: None if key not in v else np.asarray(v[key])[:, b]

    def field(key):
        return lambda v: v.get(key)

    return [
        ("sharper per example: higher top-k share", field("sharpness"), "diff", +1),
        (
            "fewer effective directions per example: lower participation ratio",
            field("participation_ratio"),
            "diff",
            -1,
        ),
        (
            "sharper in magnitude: more total curvature per loss position",
            field("total_per_position"),
            "diff",
            +1,
        ),
        (
            "sharper in magnitude: larger top curvature component per loss position",
            field("top_value_per_position"),
            "diff",
            +1,
        ),
        (
            "more of each example's curvature in the bottom band",
            band("band_share", last),
            "diff",
            +1,
        ),
        ("less of each example's curvature in the top band", band("band_share", 0), "diff", -1),
        (
            "stronger bottom-band activations than clean (K-FAC basis, pair-faithful)",
            band("act_kfac", last),
            "logratio",
            +1,
        ),
        (
            "weaker top-band activations than clean (K-FAC basis, pair-faithful)",
            band("act_kfac", 0),
            "logratio",
            -1,
        ),
        (
            "stronger bottom-band activations than clean (directions ranked by μ, paper Fig. 2)",
            band("act_kfac_mu", last),
            "logratio",
            +1,
        ),
        (
            "weaker top-band activations than clean (directions ranked by μ, paper Fig. 2)",
            band("act_kfac_mu", 0),
            "logratio",
            -1,
        ),
    ]


def build_findings(report: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Per non-clean set, each prediction of the claim with its effect size and verdict.

    Reads the per-example arrays the analyzer keeps in `report["per_example"][layer][set]
    ["values"]` (see `summary.per_example_values`) and the ablation rows' "delta_per_example".
    """
    clean = report.get("clean")
    if clean is None:
        return []
    layers = report["layers"]
    last = len(report["bands"]) - 1
    rows = report["ablation"]["rows"]
    out = []
    for name in report["sets"]:
        if name == clean:
            continue
        vals = {
            sid: (
                report["per_example"][sid][name].get("values"),
                report["per_example"][sid][clean].get("values"),
            )
            for sid in layers
        }
        for claim, measure, kind, direction in _checks(last):
            xs = [measure(v[0]) if v[0] is not None else None for v in vals.values()]
            cs = [measure(v[1]) if v[1] is not None else None for v in vals.values()]
            row = {"set": name, "versus": clean, "claim": claim}
            if any(a is None for a in xs + cs):
                row.update(verdict="n/a", of=0, agrees_in=0, contradicts_in=0)
            else:
                row.update(effect_sizes(_stack(xs), _stack(cs), kind, direction, seed))
                row["layers"] = list(layers)
            out.append(row)
        if "svd" in report["bases"]:
            out.append(_svd_check(vals, layers, name, clean, last, seed))
        out.append(_overlap(report, layers, name, clean))
        for target in dict.fromkeys(r["target"] for r in rows):
            for b, direction, what in ((last, +1, "bottom"), (0, -1, "top")):
                row = next(
                    (
                        r
                        for r in rows
                        if r["target"] == target
                        and r["band"] == report["bands"][b]["band"]
                        and r["basis"] == "kfac"
                    ),
                    None,
                )
                claim = (
                    f"removing the {what} band raises this set's loss "
                    f"{'more' if direction > 0 else 'less'} than clean's ({target})"
                )
                entry = {"set": name, "versus": clean, "claim": claim}
                per = None if row is None else row.get("delta_per_example")
                if per is None or name not in per or clean not in per:
                    entry.update(verdict="n/a", of=0, agrees_in=0, contradicts_in=0)
                else:
                    x = np.asarray(per[name], np.float64)[:, None]
                    c = np.asarray(per[clean], np.float64)[:, None]
                    entry.update(effect_sizes(x, c, "diff", direction, seed))
                    entry["raw_difference"] = row["delta"][name] - row["delta"][clean]
                out.append(entry)
    return out


def _svd_check(vals, layers, name, clean, last, seed) -> dict[str, Any]:
    """|log ratio| of bottom-band activations, K-FAC basis minus SVD basis (both per matrix):
    positive when the K-FAC bottom band separates the set from clean more."""
    claim = (
        "K-FAC bottom band separates the set from clean more than the SVD bottom band "
        "(|log ratio| larger)"
    )
    if any(v[0] is None or "act_svd" not in v[0] for v in vals.values()):
        return {"set": name, "versus": clean, "claim": claim, "verdict": "n/a", "of": 0}
    k = [
        effect_sizes(
            _stack([v[0]["act_kfac"][:, last] for v in vals.values()]),
            _stack([v[1]["act_kfac"][:, last] for v in vals.values()]),
            "logratio",
            +1,
            seed,
        ),
        effect_sizes(
            _stack([v[0]["act_svd"][:, last] for v in vals.values()]),
            _stack([v[1]["act_svd"][:, last] for v in vals.values()]),
            "logratio",
            +1,
            seed,
        ),
    ]
    # Same seed, same example counts: both bootstraps drew the same resampled examples, so the
    # per-matrix difference of |effects| is compared on paired resamples via the point values.
    diffs = [
        None if a["effect"] is None or b["effect"] is None else abs(a["effect"]) - abs(b["effect"])
        for a, b in zip(k[0]["per_matrix"], k[1]["per_matrix"])
    ]
    holds = sum(d is not None and d > 0 for d in diffs)
    of = sum(d is not None for d in diffs)
    return {
        "set": name,
        "versus": clean,
        "claim": claim,
        "verdict": "descriptive",
        "holds_in": holds,
        "of": of,
        "agrees_in": holds,
        "contradicts_in": of - holds,
        "values": diffs,
    }


def _overlap(report, layers, name, clean) -> dict[str, Any]:
    """Top-k overlap between examples (a whole-set statistic): sign count, no interval."""
    pairs = [
        (
            report["per_example"][sid][name]["idiosyncrasy"]["top_overlap"],
            report["per_example"][sid][clean]["idiosyncrasy"]["top_overlap"],
        )
        for sid in layers
    ]
    valid = [(x, c) for x, c in pairs if _finite(x) and _finite(c)]
    holds = sum(x < c for x, c in valid)
    return {
        "set": name,
        "versus": clean,
        "claim": "more idiosyncratic top directions (lower top-k overlap between examples)",
        "verdict": "descriptive" if valid else "n/a",
        "holds_in": holds,
        "of": len(valid),
        "agrees_in": holds,
        "contradicts_in": len(valid) - holds,
        "values": [[x, c] for x, c in pairs],
    }


def _finite(x) -> bool:
    return x is not None and isinstance(x, int | float | np.floating) and math.isfinite(x)


def fmt_effect(f: dict[str, Any]) -> str:
    """ "+0.42 [0.10, 0.75]" of a finding's pooled effect, or "–"."""
    if f.get("effect") is None:
        return "–"
    lo, hi = f.get("lo"), f.get("hi")
    g = lambda z: "n/a" if z is None else f"{z:+.3g}"  # noqa: E731
    return f"{g(f['effect'])} [{g(lo)}, {g(hi)}]"


def fmt_matrices(f: dict[str, Any]) -> str:
    """ "agrees 10, contradicts 0, of 12" per-matrix tally."""
    if not f.get("of"):
        return "–"
    return f"{f.get('agrees_in', 0)} agree / {f.get('contradicts_in', 0)} contradict / {f['of']}"
