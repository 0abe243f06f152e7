"""Choosing the edit on the selection splits only, and the controls at the chosen setting."""

from __future__ import annotations

from typing import Any

from kfac_mem.demo import measure
from kfac_mem.demo.config import DemoConfig
from kfac_mem.editing import EditOptions, apply_plan, parse_plan
from kfac_mem.evaluation import perplexity


def _plan(sites, layers, projections, value):
    return parse_plan(
        {f"model.layers.{i}.mlp.{p}_proj": value for i in layers for p in projections}, sites
    )


def sweep(
    model, data, eigen, selection: measure.EvalSets, c: DemoConfig, base: dict, log
) -> list[dict]:
    """Quick metrics of every (layers, projections, ρ) of the grid."""
    sites = model.linear_sites()
    rows = []
    for layers in c.layer_sets:
        for projections in c.projection_sets:
            for rho in c.rhos:
                params, _ = apply_plan(
                    model.params,
                    sites,
                    _plan(sites, layers, projections, rho),
                    eigen,
                    EditOptions(compute_rank=False),
                )
                m = measure.quick(model, data, selection, params)
                row = {
                    "layers": list(layers),
                    "projections": list(projections),
                    "rho": rho,
                    **m,
                    "ppl_ratio": m["perplexity"] / base["perplexity"],
                    "retention": {
                        g: _ratio(m["skills"][g], base["skills"][g]) for g in m["skills"]
                    },
                }
                rows.append(row)
                log(
                    f"   L{'+'.join(map(str, layers))} {'+'.join(projections)} rho {rho}: strict "
                    f"{row['strict_memorized_train']:.2f} ppl x{row['ppl_ratio']:.2f} retention "
                    + " ".join(f"{g} {v:.2f}" for g, v in row["retention"].items())
                )
    return rows


def _ratio(after: float, before: float) -> float:
    return after / before if before > 0 else float("nan")


def choose(rows: list[dict], base: dict, c: DemoConfig) -> dict:
    """Lowest selection-split recitation among edits within the perplexity and protected-skill
    limits; if none is within them, the lowest recitation among those closest to the limits."""

    def violation(r):
        v = max(0.0, r["ppl_ratio"] - (1 + c.max_ppl_increase))
        for g in c.protected_groups:
            ret = r["retention"].get(g, 1.0)
            v += max(0.0, c.min_retention - (ret if ret == ret else 1.0))
        return v

    ranked = sorted(
        rows,
        key=lambda r: (violation(r) > 0, violation(r), r["strict_memorized_train"], r["ppl_ratio"]),
    )
    best = dict(ranked[0])
    best["feasible"] = violation(best) == 0
    return best


def controls(
    model, eigen, plan, chosen: dict, selection: measure.EvalSets, data, c: DemoConfig, log
) -> dict[str, Any]:
    """SVD truncation of the same matrices at the drop fraction whose selection perplexity is
    closest to the K-FAC edit's, and the K-FAC kept set in random orthogonal bases."""
    sites = model.linear_sites()
    best = None
    for drop in c.svd_drops:
        params, _ = apply_plan(
            model.params,
            sites,
            _plan(sites, chosen["layers"], chosen["projections"], drop),
            eigen,
            EditOptions(method="svd", compute_rank=False),
        )
        ppl = perplexity(model, selection.text, params)["perplexity"]
        gap = abs(ppl - chosen["perplexity"])
        if best is None or gap < best[0]:
            best = (gap, drop, params)
    log(f"   SVD control: drop {best[1]:.2f} of the singular components (closest perplexity)")
    random_params, _ = apply_plan(
        model.params,
        sites,
        plan,
        eigen,
        EditOptions(method="random", seed=c.seed, compute_rank=False),
    )
    chosen["svd_drop"] = best[1]
    return {"svd": best[2], "random_basis": random_params}
