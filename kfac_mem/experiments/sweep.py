"""The experiment harness: edit every cell of a grid, measure it, choose by a rule, and build the
matched controls at the choice.

    cells = edit_grid(layer_sets, projection_sets, rhos)
    rows = sweep(model, eigen, cells, measure)                 # measure(params) -> metrics
    chosen = rule.choose(rows)                                 # a `ChoiceRule`
    svd_row, svd_params = matched_control(model, cells_at_choice, measure, "perplexity", target)

Every edit goes through `kfac_mem.editing.apply_plan` with the plan `EditCell.plan` builds, so a
sweep row and the final edit of the same setting are the same computation. `measure` sees only
the selection data of the experiment; held-out splits are for the report, after the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kfac_mem.editing import EditOptions, apply_plan
from kfac_mem.experiments.grid import EditCell
from kfac_mem.experiments.rule import metric

__all__ = ["edited_params", "matched_control", "sweep"]

Measure = Callable[[Any], dict[str, Any]]


def edited_params(model, eigen, cell: EditCell, method: str = "kfac", seed: int = 0):
    """The parameters of `model` with `cell` applied by `method` (no rank diagnostics)."""
    sites = model.linear_sites()
    options = EditOptions(method=method, seed=seed, compute_rank=False)
    params, _ = apply_plan(model.params, sites, cell.plan(sites), eigen, options)
    return params


def sweep(
    model,
    eigen,
    cells: Sequence[EditCell],
    measure: Measure,
    *,
    method: str = "kfac",
    knob_name: str = "rho",
    describe: Callable[[dict[str, Any]], str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per cell: {"layers", "projections", knob_name, **measure(edited params)}.

    Args:
      model: the unedited model (a placed `LanguageModel` or `VisionModel`).
      eigen: its eigen run (None for "svd").
      cells: the settings (`edit_grid`).
      measure: edited parameters -> metrics on the selection data.
      method, knob_name: the edit method and the name its knob gets in the rows.
      describe: row -> one progress line (default: the cell and every scalar metric).
      log: progress printer (None: silent).
    """
    rows = []
    for cell in cells:
        row = {**cell.to_json(knob_name), **measure(edited_params(model, eigen, cell, method))}
        rows.append(row)
        if log is not None:
            log("   " + (describe(row) if describe else _describe(cell, row, knob_name)))
    return rows


def matched_control(
    model,
    eigen,
    cells: Sequence[EditCell],
    measure: Measure,
    target_metric: str,
    target: float,
    *,
    method: str = "svd",
    knob_name: str = "drop",
) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
    """The control edit of `cells` whose `target_metric` is closest to `target` (e.g. the SVD drop
    fraction whose perplexity matches the chosen K-FAC edit's). Ties: the earlier cell.

    Returns (chosen row, its parameters, every row)."""
    rows, best = [], None
    for cell in cells:
        params = edited_params(model, eigen, cell, method)
        row = {**cell.to_json(knob_name), **measure(params)}
        rows.append(row)
        gap = abs(metric(row, target_metric) - target)
        if best is None or gap < best[0]:
            best = (gap, row, params)
    if best is None:
        raise ValueError("`cells` of the control is empty.")
    return best[1], best[2], rows


def _describe(cell: EditCell, row: dict[str, Any], knob_name: str) -> str:
    scalars = " ".join(
        f"{k} {v:.3g}"
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != knob_name
    )
    return f"{cell.label()} {knob_name} {cell.knob:g}: {scalars}"
