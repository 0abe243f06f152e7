"""`EditPlan`: which matrices to edit and how much, from a JSON string (`plan_from_json`), a
JSON/YAML file (`plan_from_file`) or layers x projections x one value (`plan_from_flags`).

Accepted forms (a projection left out, or given null, is untouched):
  {"23": {"gate": 0.6, "up": 0.6}}                 layer index -> {projection: value}
  {"model.layers.23.mlp.gate_proj": 0.6}           HF layer id -> value
Projections may be short (`gate`) or module names (`gate_proj`, `mlp.gate_proj`).

What the value means depends on the method (docs/design.md §2.8):
  kfac, random   ρ in (0, 1]: fraction of curvature mass kept (ρ ≥ 0.9999: untouched)
  svd            fraction in [0, 1) of the bottom singular components dropped (0: untouched);
                 the paper's 7B control drops 0.5% on up/down and 50% on gate
  band, random   [lo, hi] percent, 0 ≤ lo < hi ≤ 100: remove the components ranked in [lo%, hi%)
                 by descending Π (random with a band removes as many components in random bases)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from kfac_mem.editing.selection import NO_EDIT_RHO
from models.sites import LinearSite

METHODS = ("kfac", "svd", "band", "random")
Value = float | tuple[float, float]


@dataclasses.dataclass(frozen=True)
class EditPlan:
    """Layer id -> value (see module docstring), in the model's forward order."""

    targets: dict[str, Value]

    def __len__(self) -> int:
        return len(self.targets)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.targets.items()}

    def untouched(self, site_id: str, method: str) -> bool:
        """Whether the value leaves this matrix bit-identical."""
        v = self.targets[site_id]
        if method == "svd":
            return v == 0
        return not isinstance(v, tuple) and v >= NO_EDIT_RHO


def _projection_name(name: str) -> str:
    short = str(name).split(".")[-1]
    return short[: -len("_proj")] if short.endswith("_proj") else short


def _value(raw: Any, where: str) -> Value:
    if isinstance(raw, list | tuple):
        if len(raw) != 2 or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in raw
        ):
            raise ValueError(f"{where}: a band must be [lo, hi] in percent, got {raw!r}.")
        return (float(raw[0]), float(raw[1]))
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(
            f"{where}: expected a number (ρ or a drop fraction) or [lo, hi], got {raw!r}."
        )
    return float(raw)


def parse_plan(spec: Mapping[str, Any], sites: Sequence[LinearSite]) -> EditPlan:
    """Resolve a plan mapping against a model's linear sites (errors list what exists)."""
    if not isinstance(spec, Mapping):
        raise ValueError(
            f'An edit plan must be a mapping such as {{"23": {{"gate": 0.6}}}}, '
            f"got {type(spec).__name__}."
        )
    by_id = {s.id: s for s in sites}
    by_layer: dict[int, dict[str, LinearSite]] = {}
    for s in sites:
        by_layer.setdefault(s.layer, {})[s.projection] = s
    targets: dict[str, Value] = {}
    for key, entry in spec.items():
        key = str(key)
        if key in by_id:
            if entry is not None:
                targets[key] = _value(entry, key)
            continue
        if not key.lstrip("-").isdigit():
            raise ValueError(
                f"Edit plan key {key!r} is neither a layer index nor a layer id such as "
                f"{sites[0].id!r}."
            )
        layer = int(key)
        if layer not in by_layer:
            raise ValueError(
                f"Edit plan names layer {layer}, but the model has layers 0..{max(by_layer)}."
            )
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"Edit plan layer {layer}: expected {{projection: value}}, got {entry!r}."
            )
        for proj, raw in entry.items():
            name = _projection_name(proj)
            if name not in by_layer[layer]:
                raise ValueError(
                    f"Edit plan layer {layer}: unknown projection {proj!r}; this model "
                    f"has {sorted(by_layer[layer])}."
                )
            site = by_layer[layer][name]
            if raw is not None:
                targets[site.id] = _value(raw, site.id)
    order = {s.id: i for i, s in enumerate(sites)}
    return EditPlan(dict(sorted(targets.items(), key=lambda kv: order[kv[0]])))


def plan_from_json(text: str, sites: Sequence[LinearSite]) -> EditPlan:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f'`text` is not valid JSON ({e}); example: \'{{"23": {{"gate": 0.6, "up": 0.6}}}}\'.'
        ) from None
    return parse_plan(spec, sites)


def plan_from_file(path: str, sites: Sequence[LinearSite]) -> EditPlan:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`path` {path}: no such file.")
    with open(path) as f:
        spec = yaml.safe_load(f)  # YAML is a superset of JSON
    return parse_plan(spec or {}, sites)


def plan_from_flags(
    layers: Sequence[int], projections: Sequence[str], value: Value, sites: Sequence[LinearSite]
) -> EditPlan:
    return parse_plan({str(i): {p: value for p in projections} for i in layers}, sites)


def validate_plan(plan: EditPlan, method: str) -> None:
    """Check every value against `method`; errors name the layer id."""
    if method not in METHODS:
        raise ValueError(f"`method` {method!r} is not one of {METHODS}.")
    if not plan.targets:
        raise ValueError(
            "The edit plan is empty: name at least one matrix, e.g. "
            '{"23": {"gate": 0.6, "up": 0.6}}.'
        )
    for site_id, v in plan.targets.items():
        if isinstance(v, tuple):
            if method not in ("band", "random"):
                raise ValueError(
                    f"{site_id}: a [lo, hi] band is only meaningful with `method` band "
                    f"or random, not {method}."
                )
            lo, hi = v
            if not (0 <= lo < hi <= 100):
                raise ValueError(f"{site_id}: band [{lo}, {hi}] must satisfy 0 ≤ lo < hi ≤ 100.")
        elif method == "band":
            raise ValueError(
                f"{site_id}: `method` band needs [lo, hi] percent per matrix, e.g. "
                f'{{"23": {{"gate": [50, 100]}}}}; got {v}.'
            )
        elif method == "svd":
            if not (math.isfinite(v) and 0 <= v < 1):
                raise ValueError(f"{site_id}: SVD drop fraction {v} must be in [0, 1).")
        elif not (math.isfinite(v) and 0 < v <= 1):
            raise ValueError(
                f"{site_id}: ρ = {v} is outside (0, 1]; ρ is the fraction of curvature "
                f"mass kept (≥ 0.9999 leaves the matrix untouched)."
            )
