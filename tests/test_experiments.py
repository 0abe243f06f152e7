"""The experiment harness (`kfac_mem.experiments`): the choice rule against brute force, the sweep
and the matched control against direct `apply_plan` edits, and the edit record (`edit_model`)."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest
from factor_fixtures import write_factor_run

from kfac_mem import load_factors
from kfac_mem.collection.sites import select_sites
from kfac_mem.decomposition.store import decompose_run
from kfac_mem.editing import EditOptions, apply_plan, edit_model, write_edited_model
from kfac_mem.errors import NonFiniteError
from kfac_mem.experiments import (
    ChoiceRule,
    EditCell,
    Limit,
    edit_grid,
    matched_control,
    metric,
    sweep,
)
from models import load_pretrained


def _rows(rng, n):
    return [
        {
            "rho": float(rng.choice([0.6, 0.7, 0.8])),
            "strict": float(rng.integers(0, 5)) / 4,
            "ppl_ratio": float(rng.uniform(0.9, 1.6)),
            "retention": {"logic": float(rng.choice([0.5, 0.95, 1.0, math.nan]))},
        }
        for _ in range(n)
    ]


def test_choice_rule_equals_brute_force():
    """Over random sweeps: the chosen row meets every limit whenever some row does and no row
    that meets them is better by the objective; otherwise it is the row closest to the limits.
    NaN (undefined retention) violates nothing; "-" ranks larger first."""
    rule = ChoiceRule(
        objective=("strict", "ppl_ratio", "-rho"),
        limits=(Limit("ppl_ratio", hi=1.3), Limit("retention.logic", lo=0.9)),
    )
    rng = np.random.default_rng(0)
    saw_infeasible = False
    for _ in range(200):
        rows = _rows(rng, int(rng.integers(1, 9)))

        def ok(r):
            ret = r["retention"]["logic"]
            return r["ppl_ratio"] <= 1.3 and (math.isnan(ret) or ret >= 0.9)

        def viol(r):
            ret = r["retention"]["logic"]
            return max(0.0, r["ppl_ratio"] - 1.3) + (
                0.0 if math.isnan(ret) else max(0.0, 0.9 - ret)
            )

        chosen = rule.choose(rows)
        feasible = [r for r in rows if ok(r)]
        if feasible:
            best = min(feasible, key=lambda r: (r["strict"], r["ppl_ratio"], -r["rho"]))
            assert chosen["feasible"] and ok(chosen)
            assert (chosen["strict"], chosen["ppl_ratio"], -chosen["rho"]) == (
                best["strict"],
                best["ppl_ratio"],
                -best["rho"],
            )
        else:
            saw_infeasible = True
            assert not chosen["feasible"]
            assert viol(chosen) == pytest.approx(min(viol(r) for r in rows))
        assert all("feasible" not in r for r in rows)  # choosing does not mutate the rows
    assert saw_infeasible, "the random sweeps should include one with no feasible row"
    with pytest.raises(KeyError, match="'missing'"):
        metric({"a": 1}, "missing")
    with pytest.raises(ValueError, match="no rows"):
        rule.choose([])


def test_edit_grid_order_and_cells():
    cells = edit_grid([(1,), (0, 1)], [("gate", "up"), ("down",)], [0.6, 0.9])
    assert len(cells) == 8 and cells[0] == EditCell((1,), ("gate", "up"), 0.6)
    assert [c.knob for c in cells[:2]] == [0.6, 0.9] and cells[-1].layers == (0, 1)
    assert cells[1].to_json() == {"layers": [1], "projections": ["gate", "up"], "rho": 0.9}
    with pytest.raises(ValueError, match="must not be empty"):
        EditCell((), ("gate",), 0.5)


@pytest.fixture(scope="module")
def tiny_with_eigen(mesh8, tmp_path_factory):
    model = load_pretrained("tiny-olmo2", mesh=mesh8[0], rules=mesh8[1])
    root = tmp_path_factory.mktemp("harness")
    sites = select_sites(model.linear_sites(), layers=[1], projections=["gate", "up"])
    factors = write_factor_run(str(root / "factors"), model, sites=sites)
    eigen = decompose_run(load_factors(factors), str(root / "eigen"), *mesh8)
    return model, eigen


def _kernel_norms(params) -> float:
    return float(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(params)))


def test_sweep_rows_are_the_direct_edits_and_control_is_the_closest(tiny_with_eigen):
    """Each sweep row measures exactly what `apply_plan` of its plan gives; the matched control
    is the SVD drop whose metric is closest to the target (first on ties)."""
    model, eigen = tiny_with_eigen
    sites = model.linear_sites()
    cells = edit_grid([(1,)], [("gate", "up")], [0.5, 0.9])
    measure = lambda p: {"norm": _kernel_norms(p)}  # noqa: E731
    rows = sweep(model, eigen, cells, measure, log=None)
    for cell, row in zip(cells, rows, strict=True):
        direct, _ = apply_plan(model.params, sites, cell.plan(sites), eigen, EditOptions())
        assert row["rho"] == cell.knob and row["layers"] == [1]
        assert row["norm"] == pytest.approx(_kernel_norms(direct), rel=1e-6)
    assert rows[0]["norm"] < rows[1]["norm"]  # ρ 0.5 keeps less than ρ 0.9

    drops = [0.1, 0.3, 0.5, 0.7]
    target = rows[1]["norm"]
    row, params, all_rows = matched_control(
        model, None, [cells[0].with_knob(d) for d in drops], measure, "norm", target
    )
    gaps = [abs(r["norm"] - target) for r in all_rows]
    assert row["drop"] == drops[int(np.argmin(gaps))]
    assert _kernel_norms(params) == pytest.approx(row["norm"], rel=1e-6)


def test_edit_model_record_and_refusal_of_non_finite_weights(tiny_with_eigen, tmp_path):
    model, eigen = tiny_with_eigen
    plan = EditCell((1,), ("gate", "up"), 0.7).plan(model.linear_sites())
    result = edit_model(model, eigen, plan)
    r = result.record
    ids = {"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"}
    assert set(r["plan"]) == ids and {m["id"] for m in r["matrices"]} == ids
    assert r["method"] == "kfac" and r["eigen"]["path"] == eigen.directory
    assert r["model"]["fingerprint"] != r["model"]["edited_fingerprint"]
    assert set(result.metadata["edit"]) == {"method", "eigenvalues", "ekfac", "plan", "eigen"}
    out = write_edited_model(result, str(tmp_path / "edited"))
    saved = json.load(open(os.path.join(out, "report.json")))
    assert saved["plan"] == r["plan"] and saved["model"] == r["model"]
    reloaded = load_pretrained(out)
    assert reloaded.fingerprint() == r["model"]["edited_fingerprint"]

    bad = jax.tree.map(lambda x: x * np.nan, result.params)
    broken = type(result)(model.with_params(bad), r)
    with pytest.raises(NonFiniteError, match="Nothing was written"):
        write_edited_model(broken, str(tmp_path / "nan"))
    assert not (tmp_path / "nan").exists()
    with pytest.raises(ValueError, match="`eigen` is required"):
        edit_model(model, None, plan)


# --- seeds: the one multi-seed mechanism ---------------------------------------------------------


def test_run_seeds_aggregates_resumes_and_renders(tmp_path):
    from kfac_mem.atomic import write_json_atomic
    from kfac_mem.errors import InputError
    from kfac_mem.experiments.seeds import parse_seeds, render_table, run_seeds
    from kfac_mem.stats import across_seeds

    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("2-0", "x", "1,1", "", "-1"):
        with pytest.raises(InputError, match="seeds"):
            parse_seeds(bad)
    calls = []

    def run_one(seed, directory):  # a fake experiment: its numbers are functions of the seed
        calls.append(seed)
        summary = {"a": {"rate": 0.1 * seed, "never": math.nan}, "b": seed**2, "label": "x"}
        write_json_atomic(os.path.join(directory, "summary.json"), summary)
        return summary

    def measures(summary):
        return {"a": summary["a"], "b": summary["b"]}

    kwargs = dict(
        experiment="fake",
        seed_fields=("seed",),
        render=lambda r: render_table(r, "fake", scale=lambda p: 100.0 if p[-1] == "rate" else 1),
    )
    out = str(tmp_path / "multi")
    res = run_seeds([1, 2, 4], run_one, measures, out, **kwargs)
    assert calls == [1, 2, 4]
    assert res["aggregate"]["a"]["rate"] == across_seeds([0.1, 0.2, 0.4])
    assert res["aggregate"]["b"]["values"] == [1.0, 4.0, 16.0]
    assert "never" not in res["aggregate"]["a"]  # NaN for every seed: left out, not averaged
    assert res["per_seed"]["4"]["b"] == 16
    md = open(os.path.join(out, "seeds.md")).read()
    assert "| a / rate | 23.333 [" in md and "3 of 3" in md and "10, 20, 40" in md
    assert json.load(open(os.path.join(out, "seeds.json")))["seeds"] == [1, 2, 4]
    # A rerun reads finished seeds back and runs only the new one.
    again = run_seeds([1, 2, 4, 5], run_one, measures, out, **kwargs)
    assert calls == [1, 2, 4, 5] and again["aggregate"]["b"]["n"] == 4
