"""Uncertainty for every number the project reports: one module, used by every stage.

* `proportion(k, n)`: a share with its Wilson 95% interval (scipy's `binomtest`).
* `bootstrap_mean(x)`, `bootstrap_ratio(num, den)`: a mean, or a ratio of two means over the
  same examples (e.g. retention = accuracy after / accuracy before), with a seeded percentile
  bootstrap over examples (scipy's `bootstrap`).
* `bootstrap_two_sample(x, y, statistic)`: a statistic of two independent samples (a ROC AUC
  of positives against negatives) with a stratified seeded bootstrap.
* `mcnemar(a, b)`: exact McNemar test on paired binary outcomes (two methods, same examples):
  the two-sided binomial test of the discordant pairs.
* `paired_difference(a, b)`: mean(a − b) over paired examples with a seeded paired bootstrap
  interval; `compare_paired(a, b)` adds McNemar when both are binary.
* `across_seeds(values)`: mean, sample standard deviation and a Student-t interval of a number
  repeated over seeds.

Every result is a plain dict (JSON-ready) with "n", the estimate, "lo" and "hi"; `fmt_*` render
it as text for tables. Intervals are two-sided at `CONFIDENCE` (0.95) unless told.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = [
    "CONFIDENCE",
    "N_RESAMPLES",
    "across_seeds",
    "bootstrap_mean",
    "bootstrap_ratio",
    "bootstrap_two_sample",
    "compare_paired",
    "fmt_diff",
    "fmt_interval",
    "fmt_pct",
    "mcnemar",
    "paired_difference",
    "proportion",
    "stratified_ratio",
    "wilson",
]

CONFIDENCE = 0.95
N_RESAMPLES = 2000
_NAN = float("nan")


def _finite(x: float) -> float | None:
    """JSON-friendly float: None for nan/inf (json.dump would write NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval (lo, hi) of the proportion k / n; (nan, nan) when n = 0."""
    if n == 0:
        return _NAN, _NAN
    if not 0 <= k <= n:
        raise ValueError(f"`k` must be in [0, n={n}], got {k}.")
    ci = _st.binomtest(int(k), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def proportion(
    k: int | Sequence[bool] | np.ndarray, n: int | None = None, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """{"rate", "k", "n", "lo", "hi"} of k successes in n (or of a sequence of 0/1 outcomes)."""
    if n is None:
        x = np.asarray(k, dtype=np.float64).ravel()
        if x.size and not np.isin(x, (0.0, 1.0)).all():
            raise ValueError("`k` as a sequence must hold 0/1 outcomes.")
        k, n = int(x.sum()), int(x.size)
    lo, hi = wilson(int(k), int(n), confidence)
    return {
        "rate": _finite(k / n) if n else None,
        "k": int(k),
        "n": int(n),
        "lo": _finite(lo),
        "hi": _finite(hi),
        "method": "wilson",
    }


def _bootstrap(data: tuple[np.ndarray, ...], statistic, seed: int, confidence: float, paired: bool):
    n = data[0].size
    if n == 0:
        return _NAN, _NAN
    point = float(statistic(*data))
    if n == 1 or all(np.ptp(d) == 0 for d in data):
        return point, point  # every resample is the sample itself
    return _percentile_bootstrap(data, statistic, seed, confidence, paired=paired)


def _percentile_bootstrap(data, statistic, seed, confidence, **kwargs) -> tuple[float, float]:
    """scipy's seeded percentile bootstrap -> (lo, hi). A resample whose statistic is undefined
    (a zero denominator) is NaN/inf; scipy then warns and the bound comes out NaN, which the
    callers report as None (an open-ended interval), so the warnings are expected and silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", _st.DegenerateDataWarning)
        res = _st.bootstrap(
            data,
            statistic,
            vectorized=True,
            n_resamples=N_RESAMPLES,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
            **kwargs,
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """{"mean", "n", "lo", "hi"}: the mean over examples with a seeded percentile bootstrap."""
    x = np.asarray(values, np.float64).ravel()
    lo, hi = _bootstrap((x,), lambda a, axis=-1: a.mean(axis=axis), seed, confidence, False)
    return {
        "mean": _finite(x.mean()) if x.size else None,
        "n": int(x.size),
        "lo": _finite(lo),
        "hi": _finite(hi),
        "method": "bootstrap-percentile",
    }


def bootstrap_ratio(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """{"ratio", "n", "lo", "hi"}: mean(numerator) / mean(denominator) over the same examples
    (paired resampling). The ratio is None when the denominator's mean is 0. A resample whose
    denominator mean is 0 (e.g. a rare skill's few successes all left out) counts as an infinite
    ratio, 0/0 included: the bounds stay finite while such resamples are rarer than the tail
    (1 − confidence) / 2, and the upper bound is open-ended (hi None) beyond that."""
    a = np.asarray(numerator, np.float64).ravel()
    b = np.asarray(denominator, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"`numerator` and `denominator` must pair up, got {a.size} vs {b.size}.")

    def ratio(x, y, axis=-1):
        den = y.mean(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den == 0, np.inf, x.mean(axis=axis) / den)

    if a.size == 0 or b.mean() == 0:
        return {"ratio": None, "n": int(a.size), "lo": None, "hi": None, "method": "bootstrap"}
    lo, hi = _bootstrap((a, b), ratio, seed, confidence, True)
    return {
        "ratio": _finite(ratio(a, b)),
        "n": int(a.size),
        "lo": _finite(lo),
        "hi": _finite(hi),
        "method": "bootstrap-percentile",
    }


def bootstrap_two_sample(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    statistic,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    batch: int | None = 100,
) -> dict[str, Any]:
    """{"value", "n_x", "n_y", "lo", "hi"}: statistic(x, y) of two independent samples (e.g. a
    ROC AUC of positives x against negatives y) with a seeded percentile bootstrap that resamples
    each sample on its own (stratified). `statistic(x, y, axis=-1)` must be vectorized over the
    leading resample axes; `batch` resamples are evaluated at a time (memory)."""
    a = np.asarray(x, np.float64).ravel()
    b = np.asarray(y, np.float64).ravel()
    if a.size == 0 or b.size == 0:
        return {"value": None, "n_x": int(a.size), "n_y": int(b.size), "lo": None, "hi": None}
    point = float(statistic(a, b))
    if a.size == 1 and b.size == 1:
        lo = hi = point
    else:
        lo, hi = _percentile_bootstrap((a, b), statistic, seed, confidence, batch=batch)
    return {
        "value": _finite(point),
        "n_x": int(a.size),
        "n_y": int(b.size),
        "lo": _finite(lo),
        "hi": _finite(hi),
        "method": "bootstrap-percentile-stratified",
    }


def stratified_ratio(
    numerators: Sequence[Sequence[float]],
    denominators: Sequence[Sequence[float]],
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """{"ratio", "n", "lo", "hi"} of (mean over strata of mean(num_s)) / (mean over strata of
    mean(den_s)), e.g. a task group's retention = mean task accuracy after / before. Examples are
    resampled within each stratum, paired (num_s[i] with den_s[i]); seeded percentile bootstrap."""
    nums = [np.asarray(x, np.float64).ravel() for x in numerators]
    dens = [np.asarray(x, np.float64).ravel() for x in denominators]
    if len(nums) != len(dens) or any(a.shape != b.shape for a, b in zip(nums, dens)):
        raise ValueError("`numerators` and `denominators` must pair up stratum by stratum.")
    n = int(sum(a.size for a in nums))
    den = float(np.mean([b.mean() for b in dens])) if dens and n else 0.0
    if n == 0 or den == 0 or any(a.size == 0 for a in nums):
        return {"ratio": None, "n": n, "lo": None, "hi": None, "method": "bootstrap"}
    point = float(np.mean([a.mean() for a in nums])) / den
    rng = np.random.default_rng(seed)
    top, bottom = np.zeros(N_RESAMPLES), np.zeros(N_RESAMPLES)
    for a, b in zip(nums, dens):
        idx = rng.integers(0, a.size, (N_RESAMPLES, a.size))
        top += a[idx].mean(axis=1)
        bottom += b[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = top / bottom
    q = 100 * (1 - confidence) / 2
    with np.errstate(invalid="ignore"):  # a bound between two infinite ratios is inf - inf
        lo, hi = np.nanpercentile(np.where(np.isfinite(ratios), ratios, np.inf), [q, 100 - q])
    return {
        "ratio": _finite(point),
        "n": n,
        "lo": _finite(lo),
        "hi": _finite(hi),
        "method": "stratified-bootstrap-percentile",
    }


def _binary(x: np.ndarray) -> bool:
    return bool(np.isin(x, (0.0, 1.0)).all())


def mcnemar(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of paired binary outcomes a[i], b[i] (same examples, two methods).

    Returns {"n", "a_only", "b_only", "p_value"}: a_only = examples where a is 1 and b is 0; the
    p-value is the two-sided exact binomial test of a_only among the discordant pairs (1 when
    there are none).
    """
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"McNemar needs paired outcomes, got {x.size} vs {y.size}.")
    if not (_binary(x) and _binary(y)):
        raise ValueError("McNemar needs 0/1 outcomes.")
    a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    return {
        "n": int(x.size),
        "a_only": a_only,
        "b_only": b_only,
        "p_value": _mcnemar_p(a_only, b_only),
    }


def _mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact binomial test of a_only among the a_only + b_only discordant pairs."""
    d = a_only + b_only
    return 1.0 if d == 0 else float(_st.binomtest(a_only, d, 0.5).pvalue)


def mcnemar_bounds(k_a: int, k_b: int, n: int) -> tuple[float, float]:
    """The smallest and largest exact McNemar p-value over every paired table with these
    marginals: k_a and k_b successes of two methods on the same n examples, when the per-example
    outcomes were not kept. The pairs where only a succeeds range over
    [max(0, k_a − k_b), min(k_a, n − k_b)]; the bounds are equal when either method is at 0 or n.
    """
    if not (0 <= k_a <= n and 0 <= k_b <= n):
        raise ValueError(f"McNemar bounds need 0 <= k_a, k_b <= n, got {k_a}, {k_b}, {n}.")
    ps = [
        _mcnemar_p(a_only, k_b - (k_a - a_only))
        for a_only in range(max(0, k_a - k_b), min(k_a, n - k_b) + 1)
    ]
    return min(ps), max(ps)


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """{"difference", "n", "lo", "hi"}: mean(a − b) over paired examples, paired bootstrap."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"A paired difference needs paired values, got {x.size} vs {y.size}.")
    r = bootstrap_mean(x - y, seed, confidence)
    return {
        "difference": r["mean"],
        "n": r["n"],
        "lo": r["lo"],
        "hi": r["hi"],
        "method": "paired-bootstrap",
    }


def compare_paired(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Method a against method b on the same examples: the paired difference of means with its
    interval, plus the exact McNemar test when both outcome vectors are 0/1. "excludes_zero"
    says whether the interval of the difference lies on one side of 0."""
    out = paired_difference(a, b, seed, confidence)
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.size and _binary(x) and _binary(y):
        out["mcnemar"] = mcnemar(x, y)
    lo, hi = out["lo"], out["hi"]
    out["excludes_zero"] = bool(lo is not None and hi is not None and (lo > 0 or hi < 0))
    return out


def across_seeds(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """{"mean", "sd", "n", "lo", "hi", "values"} of one number over seeds: sample standard
    deviation (ddof 1) and the Student-t interval of the mean (lo = hi = mean for one seed)."""
    x = np.asarray(values, np.float64).ravel()
    n = int(x.size)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "lo": None, "hi": None, "values": []}
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else 0.0
    return {
        "mean": mean,
        "sd": sd,
        "n": n,
        "lo": mean - half,
        "hi": mean + half,
        "values": x.tolist(),
        "method": "student-t",
    }


def fmt_interval(r: dict[str, Any], key: str, scale: float = 1.0, digits: int = 1) -> str:
    """ "v [lo, hi]" of `r[key]` times `scale` ("n/a" when missing)."""
    v = r.get(key)
    if v is None:
        return "n/a"
    f = lambda z: "n/a" if z is None else f"{scale * z:.{digits}f}"  # noqa: E731
    return f"{f(v)} [{f(r.get('lo'))}, {f(r.get('hi'))}]"


def fmt_pct(r: dict[str, Any], digits: int = 1) -> str:
    """A `proportion` as "45.0 [30.1, 60.2]" (percent)."""
    return fmt_interval(r, "rate", 100.0, digits)


def fmt_diff(r: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """A `compare_paired` result as "−45.0 [−60.0, −30.0], McNemar p = 0.0001"."""
    text = fmt_interval(r, "difference", scale, digits)
    m = r.get("mcnemar")
    if m is not None:
        text += f", McNemar p = {m['p_value']:.2g}"
    return text
