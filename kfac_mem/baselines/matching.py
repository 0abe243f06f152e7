"""Search a method's strength knob until held-out perplexity matches a target (paper Table 1).

The paper compares K-FAC, SVD and BSN at (roughly) equal perplexity. Each method has one knob that
trades memorization against perplexity (K-FAC: kept curvature mass ρ; SVD: the dropped fraction of
singular components; BSN: the pruned fraction). `match_perplexity` walks a grid from the weakest
to the strongest setting, stops once perplexity passes the target band, then bisects between the
two grid points that bracket the target. The chosen setting is the trial closest to the target;
it is `matched` only if |ppl − target| ≤ tolerance · target, otherwise it is reported unmatched
(never silently passed off as matched).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass
class MatchResult:
    """The chosen setting of one knob search.

    Attributes:
      knob: the chosen knob value. perplexity: its held-out perplexity.
      matched: whether |perplexity − target| ≤ tolerance · target.
      payload: what `evaluate` returned with it (e.g. the edited parameters).
      seconds: time to build that setting (edit or training; evaluation excluded).
      trials: every setting tried, in order: {"knob", "perplexity", "seconds", "refined"}.
      target, tolerance: the band searched for.
    """

    knob: float
    perplexity: float
    matched: bool
    payload: Any
    seconds: float
    trials: list[dict[str, Any]]
    target: float
    tolerance: float

    def summary(self) -> dict[str, Any]:
        """Everything but the payload (JSON-ready)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "payload"}


def within(perplexity: float, target: float, tolerance: float) -> bool:
    """|perplexity − target| ≤ tolerance · target (a NaN perplexity is never within)."""
    return math.isfinite(perplexity) and abs(perplexity - target) <= tolerance * target


def midpoint(a: float, b: float) -> float:
    """Between two knob values: geometric for log-spaced positive values (ratio > 4), else linear."""
    lo, hi = min(a, b), max(a, b)
    if lo > 0 and hi / lo > 4:
        return math.sqrt(lo * hi)
    return 0.5 * (a + b)


def match_perplexity(
    evaluate: Callable[[float], tuple[float, Any, float]],
    grid: Sequence[float],
    target: float,
    tolerance: float,
    refine: int = 3,
    log: Callable[[str], None] | None = None,
    name: str = "knob",
) -> MatchResult:
    """Find the knob value whose perplexity is closest to `target`.

    Args:
      evaluate: knob -> (held-out perplexity, payload, seconds spent building the setting).
      grid: knob values ordered from the weakest setting (lowest perplexity) to the strongest.
      target: the perplexity to match. tolerance: relative half-width of the band, e.g. 0.03.
      refine: at most this many bisection steps between the grid points bracketing the target.
      log: progress printer. name: the knob's name in messages.
    """
    if not grid:
        raise ValueError(f"The {name} grid is empty; give at least one value to try.")
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"Target perplexity must be a positive number, got {target}.")
    if not tolerance >= 0:
        raise ValueError(f"Perplexity tolerance must be >= 0, got {tolerance}.")
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] = {}

    def run(knob: float, refined: bool) -> float:
        ppl, payload, seconds = evaluate(knob)
        ppl = float(ppl)
        trials.append(
            {"knob": knob, "perplexity": ppl, "seconds": round(seconds, 3), "refined": refined}
        )
        gap = abs(ppl - target) if math.isfinite(ppl) else math.inf
        if not best or gap < best["gap"]:
            best.update(gap=gap, knob=knob, perplexity=ppl, payload=payload, seconds=seconds)
        if log is not None:
            flag = "within" if within(ppl, target, tolerance) else "outside"
            log(f"    {name} {knob:.6g}: perplexity {ppl:.4f} ({flag} target {target:.4f})")
        return ppl

    walked: list[tuple[float, float]] = []
    for knob in grid:
        ppl = run(float(knob), False)
        walked.append((float(knob), ppl))
        if within(ppl, target, tolerance) or not (ppl <= target * (1 + tolerance)):
            break  # in the band, or past it: stronger settings only raise perplexity
    if not within(best["perplexity"], target, tolerance):
        bracket = next(
            (
                (a, b)
                for a, b in itertools.pairwise(walked)
                if a[1] < target and not (b[1] <= target)  # b above target (or diverged)
            ),
            None,
        )
        for _ in range(refine if bracket else 0):
            (ka, pa), (kb, pb) = bracket
            knob = midpoint(ka, kb)
            if any(abs(knob - t["knob"]) <= 1e-12 * max(1.0, abs(knob)) for t in trials):
                break
            ppl = run(knob, True)
            if within(ppl, target, tolerance):
                break
            bracket = ((knob, ppl), (kb, pb)) if ppl < target else ((ka, pa), (knob, ppl))
    return MatchResult(
        knob=best["knob"],
        perplexity=best["perplexity"],
        matched=within(best["perplexity"], target, tolerance),
        payload=best["payload"],
        seconds=best["seconds"],
        trials=trials,
        target=target,
        tolerance=tolerance,
    )
