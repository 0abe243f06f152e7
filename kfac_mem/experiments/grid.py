"""The edit settings an experiment sweeps: which MLP matrices, and how much of each to keep."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from kfac_mem.editing.plan import EditPlan, plan_from_flags
from models.sites import LinearSite

__all__ = ["EditCell", "edit_grid"]


@dataclasses.dataclass(frozen=True)
class EditCell:
    """One setting of a sweep: the same `knob` on every `projections` matrix of every `layers` block.

    `knob` is what the edit method takes per matrix: for "kfac" (and "random") ρ, the fraction of
    curvature mass kept; for "svd" the fraction of singular components dropped.
    """

    layers: tuple[int, ...]
    projections: tuple[str, ...]
    knob: float

    def __post_init__(self):
        if not self.layers or not self.projections:
            raise ValueError("`layers` and `projections` of an EditCell must not be empty.")

    def plan(self, sites: Sequence[LinearSite]) -> EditPlan:
        """The edit plan over `sites` (`kfac_mem.editing.plan_from_flags`)."""
        return plan_from_flags(self.layers, self.projections, self.knob, sites)

    def with_knob(self, knob: float) -> EditCell:
        return dataclasses.replace(self, knob=knob)

    def to_json(self, knob_name: str = "rho") -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "projections": list(self.projections),
            knob_name: self.knob,
        }

    def label(self) -> str:
        """ "L1+2 gate+up": the matrices, without the knob."""
        return f"L{'+'.join(map(str, self.layers))} {'+'.join(self.projections)}"


def edit_grid(
    layer_sets: Sequence[Sequence[int]],
    projection_sets: Sequence[Sequence[str]],
    knobs: Sequence[float],
) -> list[EditCell]:
    """Every (layers, projections, knob), in that nesting order (layers outermost)."""
    if not (layer_sets and projection_sets and knobs):
        raise ValueError("`layer_sets`, `projection_sets` and `knobs` must each name a value.")
    return [
        EditCell(tuple(layers), tuple(projections), float(knob))
        for layers, projections, knob in itertools.product(layer_sets, projection_sets, knobs)
    ]
