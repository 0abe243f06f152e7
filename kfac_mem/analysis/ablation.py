"""Band ablation: remove one population curvature band at a time and measure each set's loss.

The band is removed through the edit's own band control (`editing.apply_plan` with
`EditOptions(method="band")`: W' = U_G((U_Gᵀ W U_A) ⊙ M)U_Aᵀ with M = 0 on the components ranked
in [lo%, hi%) of descending Π = λ_i μ_j), either from every analyzed matrix at once (`joint`) or
from one matrix at a time (`per_layer`). The control (`random`) removes the same number of
components in Haar-random orthogonal bases. Loss = mean next-token cross-entropy (gold labels, nats)
over each set's loss positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kfac_mem.analysis.sets import ExampleSet
from kfac_mem.decomposition.store import EigenRun
from kfac_mem.editing.apply import EditOptions, apply_plan
from kfac_mem.editing.plan import parse_plan
from kfac_mem.evaluation.perplexity import window_nll

SCOPES = ("joint", "per_layer", "none")


def set_loss(model, params, s: ExampleSet, batch_size: int = 8) -> tuple[float, np.ndarray]:
    """(mean CE over all loss positions of the set, per-example mean CE [N]), in nats."""
    nll = window_nll(model, s.tokens, params, batch_size)  # [N, L-1]
    w = s.positions[:, :-1].astype(np.float64)
    per_example = (nll * w).sum(1) / np.maximum(w.sum(1), 1.0)
    return float((nll * w).sum() / max(w.sum(), 1.0)), per_example


def band_ablation(
    model,
    eigen: EigenRun,
    site_ids: Sequence[str],
    sets: Mapping[str, ExampleSet],
    bands,
    baseline: Mapping[str, float],
    scope: str = "joint",
    control: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    log=None,
    baseline_per_example: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """One row per (target, band, basis): losses per set and their change from `baseline`.

    Args:
      model: the unedited model (its params are not modified).
      eigen: the eigen run whose bases and λ, μ define the bands.
      site_ids: the analyzed layers.
      sets: the example sets.
      bands: ((name, lo %, hi %), ...).
      baseline: loss of each set under the unedited model (`set_loss`).
      scope: "joint" (one edit of all layers per band), "per_layer", or "none".
      control: also remove the same number of components in random orthogonal bases.
      baseline_per_example: per-example losses of the unedited model (`set_loss`); with them each
        row also has "delta_per_example" (per set, the change of each example's mean CE per
        loss position), which the findings bootstrap over.
    """
    if scope not in SCOPES:
        raise ValueError(f"ablation scope must be one of {SCOPES}, got {scope!r}.")
    if scope == "none":
        return []
    sites = model.linear_sites()
    targets = [("all analyzed layers", list(site_ids))]
    if scope == "per_layer":
        targets = [(sid, [sid]) for sid in site_ids]
    methods = ("band", "random") if control else ("band",)
    rows = []
    for target, ids in targets:
        for band, lo, hi in bands:
            for method in methods:
                plan = parse_plan({sid: [lo, hi] for sid in ids}, sites)
                options = EditOptions(method=method, compute_rank=False, seed=seed)
                params, report = apply_plan(model.params, sites, plan, eigen, options)
                measured = {
                    name: set_loss(model, params, s, batch_size) for name, s in sets.items()
                }
                losses = {name: m[0] for name, m in measured.items()}
                removed = sum(r["components"] - r["kept"] for r in report)
                mass = [1.0 - r["kept_mass"] for r in report if r.get("kept_mass") is not None]
                rows.append(
                    {
                        "target": target,
                        "layers": ids,
                        "band": band,
                        "lo": lo,
                        "hi": hi,
                        "basis": "kfac" if method == "band" else "random",
                        "removed_components": int(removed),
                        "removed_mass_fraction_mean": float(np.mean(mass)) if mass else None,
                        "rel_delta_fro_mean": float(np.mean([r["rel_delta_fro"] for r in report])),
                        "loss": losses,
                        "delta": {n: losses[n] - baseline[n] for n in losses},
                    }
                )
                if baseline_per_example is not None:
                    rows[-1]["delta_per_example"] = {
                        n: (m[1] - baseline_per_example[n]).tolist() for n, m in measured.items()
                    }
                if log is not None:
                    deltas = ", ".join(f"{n} {v:+.4f}" for n, v in rows[-1]["delta"].items())
                    log(f"ablate {band} ({rows[-1]['basis']}) in {target}: Δloss {deltas}")
                del params
    return rows
