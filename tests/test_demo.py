"""The reduced demo (`kfac-mem demo --preset tiny`): every stage runs through the CLI and its outputs
agree with each other. Scientific thresholds are not asserted here (tiny sizes); the default demo's
numbers are in docs/ and README."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from kfac_mem import load_factors
from kfac_mem.cli import main
from kfac_mem.decomposition.store import load_eigen
from kfac_mem.demo.config import DemoConfig
from kfac_mem.demo.presets import DEMO_PRESETS, demo_config
from kfac_mem.demo.report import demo_targets
from models import load_pretrained
from models.sites import get_path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "tiny")
    assert main(["demo", "--preset", "tiny", "--out", out]) == 0
    return out


def test_every_stage_wrote_its_artifacts(run_dir):
    for path in (
        "config.yaml",
        "report.md",
        "summary.json",
        "mined/memorized/train.jsonl",
        "mined/canaries/validation.jsonl",
        "factors/metadata.json",
        "eigen/metadata.json",
        "analysis/report.json",
        "analysis/report.md",
        "edited/model_config.json",
        "edited/report.json",
        "figures/sweep.png",
        "figures/removal_and_retention.png",
    ):
        assert os.path.exists(os.path.join(run_dir, path)), path


def test_outputs_are_consistent(run_dir):
    s = json.load(open(os.path.join(run_dir, "summary.json")))
    c = DemoConfig.tiny()
    # Mined windows are recited by construction: the unedited model recites all of them greedily.
    mined = s["mined"]["memorized"]
    assert mined["train"] + mined["validation"] == mined["after_dedup"] <= mined["memorized"]
    assert mined["validation"] > 0, "the tiny model should memorize some windows"
    assert s["recitation_strict_before"] == 1.0
    assert s["table1"]["unedited"]["memorized_validation"]["mean_distance"] == 0.0
    assert s["table1"]["unedited"]["ndcg@10"] == pytest.approx(1.0)
    assert s["recitation_strict_after"] == s["table1"]["kfac"]["memorized_validation"]["strict"]
    assert s["perplexity_after"] == s["table1"]["kfac"]["perplexity"]
    assert set(s["retention"]) == {"closed_book", "arithmetic", "open_book", "logic"}
    for group, r in s["retention"].items():
        before, after = (s["table1"][v]["skills"][group] for v in ("unedited", "kfac"))
        assert (math.isnan(r) and before == 0) or r == pytest.approx(after / before)
    assert s["chosen"]["rho"] in c.rhos and s["chosen"]["layers"] in [list(x) for x in c.layer_sets]
    assert s["all_targets_met"] == all(s["targets"].values())
    assert s["targets"] == demo_targets(
        c,
        s["recitation_strict_before"],
        s["recitation_strict_after"],
        s["perplexity_before"],
        s["perplexity_after"],
        s["retention"],
    )
    # Factors: the corpus the demo describes, one count per labelled position.
    factors = load_factors(os.path.join(run_dir, "factors"))
    assert (
        factors.n_tokens == c.factor_windows * (c.mixture.seq_len - 1) == s["factors"]["n_tokens"]
    )
    assert factors.complete and factors.mode == c.factor_mode
    assert set(load_eigen(os.path.join(run_dir, "eigen")).sites) == set(factors.sites)


def test_edited_checkpoint_is_the_chosen_edit(run_dir):
    s = json.load(open(os.path.join(run_dir, "summary.json")))
    report = json.load(open(os.path.join(run_dir, "edited", "report.json")))
    chosen = {
        f"model.layers.{i}.mlp.{p}_proj"
        for i in s["chosen"]["layers"]
        for p in s["chosen"]["projections"]
    }
    assert {r["id"] for r in report["matrices"]} == chosen
    assert report["method"] == "kfac" and set(report["plan"]) == chosen
    assert report["model"]["edited_fingerprint"] != report["model"]["fingerprint"]
    edited = load_pretrained(os.path.join(run_dir, "edited"))
    original = load_pretrained(os.path.join(run_dir, "model"))
    for site in edited.linear_sites():
        a = np.asarray(get_path(edited.params, site.kernel_path))
        b = np.asarray(get_path(original.params, site.kernel_path))
        assert np.array_equal(a, b) == (site.id not in chosen), site.id


def test_one_registry_of_demo_presets(capsys):
    """`kfac-mem demo --preset` takes exactly the registered names, and its help lists each with
    its one-line description; each preset builds its experiment's config, named as registered."""
    from kfac_mem.demo.smollm2 import SmolDemoConfig
    from kfac_mem.vision.demo import VisionDemoConfig

    kinds = {"language": DemoConfig, "smollm2": SmolDemoConfig, "vision": VisionDemoConfig}
    assert {"default", "tiny", "smollm2", "vit-digits", "vit-fashion-mnist"} <= set(DEMO_PRESETS)
    for name, preset in DEMO_PRESETS.items():
        config = demo_config(name)
        assert isinstance(config, kinds[preset.experiment]) and config == preset.config()
        assert getattr(config, "name", name) == name
        assert preset.multi_seed == (preset.experiment != "smollm2")
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for preset in DEMO_PRESETS.values():
        assert f"{preset.name} {' '.join(preset.description.split())}" in help_text
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--preset", "nonexistent"])
    assert exit_info.value.code == 2


def test_demo_targets_come_from_the_config():
    """The report's targets are the config's thresholds, the same numbers the choice rule uses."""
    c = DemoConfig()
    kept = {"open_book": 0.95, "logic": 1.0}
    met = demo_targets(c, 0.95, 0.05, 50.0, 60.0, kept)
    assert list(met) == [
        "strict_before_at_least_90pct",
        "strict_after_at_most_10pct",
        "perplexity_increase_at_most_30pct",
        "open_book_retention_at_least_90pct",
        "logic_retention_at_least_90pct",
    ]
    assert all(met.values())
    limits = {lim.metric: lim for lim in c.choice_rule().limits}
    assert limits["ppl_ratio"].hi == 1 + c.max_ppl_increase
    assert limits["retention.logic"].lo == c.min_retention
    strict = DemoConfig(max_ppl_increase=0.1, min_retention=0.99, max_recitation_after=0.01)
    met = demo_targets(strict, 0.95, 0.05, 50.0, 60.0, kept)
    assert met == {
        "strict_before_at_least_90pct": True,
        "strict_after_at_most_1pct": False,
        "perplexity_increase_at_most_10pct": False,
        "open_book_retention_at_least_99pct": False,
        "logic_retention_at_least_99pct": True,
    }
