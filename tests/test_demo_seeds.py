"""The LM demo from committed artifacts, over seeds: a rerun reproduces the committed summary,
and `--seeds` repeats every seed-dependent stage and aggregates across seeds.

One multi-seed run of the micro demo (tests/demo_micro.py: its model is committed under
tests/assets/demo-micro/, the analyzer stage is off) on one device, seeds 0 and 1, is shared by
the tests; its seed 0 is exactly `run_demo(micro_config())`, the run that wrote
`expected_summary.json`.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from demo_micro import EXPECTED, micro_config, reproducible

from kfac_mem import load_factors
from kfac_mem.cli import main as cli_main
from kfac_mem.demo.seeds import measures, run_demo_seeds, seeded
from kfac_mem.experiments.seeds import leaves
from kfac_mem.stats import across_seeds

SEEDS = [0, 1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, mesh1):
    out = str(tmp_path_factory.mktemp("demo_seeds") / "out")
    result = run_demo_seeds(micro_config(), SEEDS, out, *mesh1, log=None)
    return out, result


def _summary(out: str, seed: int) -> dict:
    with open(os.path.join(out, f"seed-{seed}", "summary.json")) as f:
        return json.load(f)


def test_rerun_from_the_committed_checkpoint_reproduces_the_committed_summary(run):
    """The rule. EXACT: every count and decision: mining counts, factor positions, the chosen
    edit (layers, projections, ρ) and SVD drop, and k of n for every variant × memorized set and
    skill group. The checkpoint, data and seeds are committed, so these are decisions (argmax,
    greedy tokens, the choice rule's ordering) taken with margins far above float noise; any
    difference is a real change of behaviour. WITHIN TOLERANCE: perplexity (relative 1e-4) and
    nDCG@10 (absolute 1e-4), float32 reductions whose order may differ across CPUs and XLA
    builds (~1e-6 relative each, also reaching the edited weights through the factors and their
    eigenvectors): 1e-4 leaves 100x headroom, while a changed edit or generation moves them by
    far more (the sweep's settings differ by 1-15% in perplexity). Mean d/L is a mean of ratios
    of integer distances, fixed once the generations are: absolute 1e-9."""
    out, _ = run
    got = reproducible(_summary(out, 0))
    with open(EXPECTED) as f:
        want = json.load(f)
    assert got["exact"] == want["exact"]
    assert got["close"].keys() == want["close"].keys()
    for variant, values in want["close"].items():
        for key, value in values.items():
            tol = {"perplexity": {"rel": 1e-4}, "ndcg@10": {"abs": 1e-4}}.get(key, {"abs": 1e-9})
            assert got["close"][variant][key] == pytest.approx(value, **tol), (variant, key)


def test_seeds_repeat_every_seed_dependent_stage_and_aggregate(run):
    out, result = run
    s0, s1 = (_summary(out, s) for s in SEEDS)
    assert seeded(micro_config(), 1).seed == 1 and seeded(micro_config(), 1).split_seed == 0
    assert [s0["manifest"]["seeds"], s1["manifest"]["seeds"]] == [
        {"seed": 0, "split_seed": 0},
        {"seed": 1, "split_seed": 0},
    ]
    # Seed-dependent: the sampled labels of the factors and the random-basis control ...
    f0, f1 = (load_factors(os.path.join(out, f"seed-{s}", "factors")) for s in SEEDS)
    site = sorted(f0)[0]
    assert f0.n_tokens == f1.n_tokens
    assert not np.allclose(f0[site].G, f1[site].G)
    np.testing.assert_allclose(f0[site].A, f1[site].A, rtol=1e-5)  # same inputs, same A
    ppl = [s["table1"]["random_basis"]["perplexity"] for s in (s0, s1)]
    assert ppl[0] != ppl[1]
    # ... not the data or the memorized split: every seed is scored on the same held-out rows.
    rows = [
        open(os.path.join(out, f"seed-{s}", "mined", "memorized", "validation.jsonl")).read()
        for s in SEEDS
    ]
    assert rows[0] == rows[1]
    # The aggregate is `across_seeds` of each seed's measures.
    per = {s: leaves(measures(x)) for s, x in zip(SEEDS, (s0, s1))}
    agg = leaves(result["aggregate"])
    path = ("variants", "kfac", "perplexity")
    want = across_seeds([per[s][path] for s in SEEDS])
    assert {k: agg[(*path, k)] for k in ("mean", "sd", "n", "lo", "hi")} == {
        k: want[k] for k in ("mean", "sd", "n", "lo", "hi")
    }
    assert result["seeds"] == SEEDS and result["seed_fields"] == ["seed"]
    with open(os.path.join(out, "seeds.json")) as f:
        assert json.load(f)["aggregate"] == json.loads(json.dumps(result["aggregate"]))
    md = open(os.path.join(out, "seeds.md")).read()
    assert "LM demo (micro) over seeds [0, 1]" in md and "variants / kfac / perplexity" in md


def test_a_rerun_reads_finished_seeds_back(run, monkeypatch):
    out, result = run

    def fail(*args, **kwargs):
        raise AssertionError("a finished seed was run again")

    monkeypatch.setattr("kfac_mem.demo.pipeline.run_demo", fail)
    again = run_demo_seeds(micro_config(), SEEDS, out, log=None)
    assert json.dumps(again["aggregate"]) == json.dumps(result["aggregate"])


def test_cli_seed_flags_are_checked_before_any_work(tmp_path, capsys):
    assert (
        cli_main(["demo", "--preset", "smollm2", "--seeds", "0-1", "--out", str(tmp_path / "a")])
        == 2
    )
    assert (
        cli_main(["demo", "--preset", "tiny", "--seeds", "3-1", "--out", str(tmp_path / "b")]) == 2
    )
    assert "seeds" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
