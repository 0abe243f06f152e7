"""How an experiment chooses its edit: one rule object, declared with its limits and objective."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ChoiceRule", "Limit", "metric"]


def metric(row: Mapping[str, Any], name: str) -> float:
    """`row[name]`, where a dotted name reads nested dicts ("retention.open_book"); bools as 0/1."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"metric {name!r} is not in the sweep row (keys {sorted(row)}).")
        value = value[part]
    return float(value)


@dataclasses.dataclass(frozen=True)
class Limit:
    """A bound a chosen setting must respect: `lo` ≤ row[metric] ≤ `hi` (either may be None).

    An undefined value (NaN, e.g. a retention whose baseline score is 0) violates nothing: there is
    no evidence of harm to weigh.
    """

    metric: str
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self):
        if self.lo is None and self.hi is None:
            raise ValueError(f"Limit on {self.metric!r} needs `lo` or `hi`.")

    def violation(self, row: Mapping[str, Any]) -> float:
        """How far outside the bound the row is (0 when within)."""
        v = metric(row, self.metric)
        if math.isnan(v):
            return 0.0
        out = 0.0
        if self.hi is not None:
            out += max(0.0, v - self.hi)
        if self.lo is not None:
            out += max(0.0, self.lo - v)
        return out


@dataclasses.dataclass(frozen=True)
class ChoiceRule:
    """Choose the row that meets every limit and is best by `objective`.

    `objective` names metrics compared in order (lexicographically), smallest first; a leading "-"
    means larger is better. Rows are ranked by (violates any limit, total violation, objective...),
    so when no row meets the limits the choice is the one closest to them, then the best by the
    objective. The chosen row is returned as a copy with "feasible" (met every limit) added.
    """

    objective: tuple[str, ...]
    limits: tuple[Limit, ...] = ()

    def __post_init__(self):
        if not self.objective:
            raise ValueError("ChoiceRule needs at least one `objective` metric.")

    def violation(self, row: Mapping[str, Any]) -> float:
        total = 0.0
        for limit in self.limits:
            total += limit.violation(row)
        return total

    def key(self, row: Mapping[str, Any]) -> tuple[float, ...]:
        v = self.violation(row)
        keys = [
            -metric(row, name[1:]) if name.startswith("-") else metric(row, name)
            for name in self.objective
        ]
        return (float(v > 0), v, *keys)

    def index(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """The position of the chosen row in `rows` (the first of equally ranked ones)."""
        if not rows:
            raise ValueError("Nothing to choose from: the sweep produced no rows.")
        return min(range(len(rows)), key=lambda i: self.key(rows[i]))

    def choose(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        best = dict(rows[self.index(rows)])
        best["feasible"] = self.violation(best) == 0
        return best

    def to_json(self) -> dict[str, Any]:
        return {
            "objective": list(self.objective),
            "limits": [dataclasses.asdict(limit) for limit in self.limits],
        }
