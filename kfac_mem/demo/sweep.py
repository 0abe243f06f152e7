"""The LM demo's experiment on the harness (`kfac_mem.experiments`): its grid, its selection-split
measure, its choice rule (`DemoConfig.choice_rule`) and its controls at the chosen setting."""

from __future__ import annotations

import math
from typing import Any

from kfac_mem.demo import measure
from kfac_mem.demo.config import DemoConfig
from kfac_mem.evaluation import perplexity
from kfac_mem.experiments import EditCell, edit_grid, edited_params, matched_control
from kfac_mem.experiments import sweep as run_sweep


def sweep(
    model, data, eigen, selection: measure.EvalSets, c: DemoConfig, base: dict, log
) -> list[dict]:
    """Quick metrics of every (layers, projections, ρ) of the grid on the selection splits."""

    def measure_edit(params) -> dict[str, Any]:
        m = measure.quick(model, data, selection, params)
        return {
            **m,
            "ppl_ratio": m["perplexity"] / base["perplexity"],
            "retention": {g: _ratio(m["skills"][g], base["skills"][g]) for g in m["skills"]},
        }

    cells = edit_grid(c.layer_sets, c.projection_sets, c.rhos)
    return run_sweep(model, eigen, cells, measure_edit, describe=_describe, log=log)


def chosen_cell(chosen: dict[str, Any]) -> EditCell:
    return EditCell(tuple(chosen["layers"]), tuple(chosen["projections"]), chosen["rho"])


def controls(
    model, eigen, chosen: dict, selection: measure.EvalSets, c: DemoConfig, log
) -> dict[str, Any]:
    """SVD truncation of the same matrices at the drop fraction whose selection perplexity is
    closest to the K-FAC edit's, and the K-FAC kept set in random orthogonal bases."""
    cell = chosen_cell(chosen)
    row, svd_params, _ = matched_control(
        model,
        eigen,
        [cell.with_knob(d) for d in c.svd_drops],
        lambda params: perplexity(model, selection.text, params),
        "perplexity",
        chosen["perplexity"],
    )
    log(f"   SVD control: drop {row['drop']:.2f} of the singular components (closest perplexity)")
    chosen["svd_drop"] = row["drop"]
    random_params = edited_params(model, eigen, cell, "random", seed=c.seed)
    return {"svd": svd_params, "random_basis": random_params}


def _ratio(after: float, before: float) -> float:
    return after / before if before > 0 else float("nan")


def _describe(row: dict[str, Any]) -> str:
    retention = " ".join(
        f"{g} {'n/a' if math.isnan(v) else f'{v:.2f}'}" for g, v in row["retention"].items()
    )
    return (
        f"L{'+'.join(map(str, row['layers']))} {'+'.join(row['projections'])} rho {row['rho']}: "
        f"strict {row['strict_memorized_train']:.2f} ppl x{row['ppl_ratio']:.2f} "
        f"retention {retention}"
    )
