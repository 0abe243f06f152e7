"""The audit (kfac_mem.audit): its statistics against brute force, and every attack on a model
trained to memorize (the unedited toy: fully extractable, MIA AUC near 1) and on text it never saw
(nothing beyond chance), on 1 and 8 devices, through the library and the CLI."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from toy_memorizer import ToyConfig, cached_toy, write_toy

import models
from kfac_mem.audit import AuditOptions, run_audit
from kfac_mem.audit.membership import auc, tpr_at_fpr
from kfac_mem.audit.prefix import dropout_prompts, prompt_variants
from kfac_mem.audit.relearning import split_subset
from kfac_mem.audit.runner import check_output_dir
from kfac_mem.audit.scoring import score_candidates
from kfac_mem.evaluation.levenshtein import recitation_match
from kfac_mem.stats import bootstrap_two_sample

# ---------------------------------------------------------------- statistics and helpers (fast)


def test_auc_equals_sklearn_and_its_bootstrap_brackets_it():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 40), np.r_[rng.normal(0.0, 1.0, 59), 1.0]
    pos[:3] = 1.0  # ties count one half
    want = roc_auc_score(np.r_[np.ones(40), np.zeros(60)], np.r_[pos, neg])
    assert auc(pos, neg) == pytest.approx(want, abs=1e-12)
    r = bootstrap_two_sample(pos, neg, auc, seed=3)
    assert r["lo"] < want < r["hi"] and (r["n_x"], r["n_y"]) == (40, 60)
    assert bootstrap_two_sample(pos, neg, auc, seed=3) == r  # seeded


def test_tpr_at_one_percent_fpr_by_brute_force():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(2.0, 1.0, 50), rng.normal(0.0, 1.0, 300)
    got = tpr_at_fpr(pos, neg)
    best = 0  # largest TPR over all thresholds with at most 1% of negatives above
    for thr in np.r_[pos, neg, np.inf]:
        if (neg >= thr).mean() <= 0.01:
            best = max(best, int((pos >= thr).sum()))
    assert got["k"] == best and got["n"] == 50 and got["fpr"] <= 0.01
    assert got["lo"] <= got["rate"] <= got["hi"]


def test_candidates_score_like_the_recitation_criteria():
    rng = np.random.default_rng(2)
    suffixes = rng.integers(0, 9, (3, 8))
    cand = np.repeat(suffixes[:, None], 4, 1).copy()
    cand[0, 1, 5:] = 99  # 3 of 8 wrong: match 5, d/L 0.375 (not loose)
    cand[1, 2, 7] = 99  # 1 wrong: loose, match 7
    cand[2, 3, 0] = 99  # first wrong: match 0, loose
    sc = score_candidates(cand, suffixes)
    for i in range(3):
        for j in range(4):
            _, d, strict, loose = recitation_match(cand[i, j].tolist(), suffixes[i].tolist())
            assert (sc["exact"][i, j], sc["loose"][i, j]) == (strict, loose)
            assert sc["distance"][i, j] == pytest.approx(d)
    assert sc["match"][0, 1] == 5 and sc["match"][1, 2] == 7 and sc["match"][2, 3] == 0
    assert sc["match"][0, 0] == 8


def test_prompt_variants_and_dropout():
    prefixes = np.arange(40).reshape(2, 20)
    v = prompt_variants(
        prefixes, AuditOptions(shifts=(1, 25), dropout=(0.5,)), list(range(100, 130))
    )
    assert v["full"][0] == list(range(20)) and v["last8"][1] == list(range(32, 40))
    assert "last32" not in v and "drop25" not in v  # not shorter than the prefix
    assert v["drop1"][0] == list(range(1, 20)) and v["prepend1"][0] == [129, *range(20)]
    assert v["prepend25"][0][:25] == list(range(105, 130))
    d = dropout_prompts(np.arange(2000).reshape(1, 2000), 0.25, seed=0)[0]
    assert d[-1] == 1999 and 0.7 < len(d) / 2000 < 0.8 and d == sorted(d)
    assert d == dropout_prompts(np.arange(2000).reshape(1, 2000), 0.25, seed=0)[0]


def test_subset_split_is_disjoint_and_seeded():
    a, b = split_subset(10, 0.25, seed=0, set_index=0)
    assert len(a) == 2 and len(b) == 8 and not set(a) & set(b) and set(a) | set(b) == set(range(10))
    assert (split_subset(10, 0.25, 0, 0)[0] == a).all()


def test_refuses_bad_options_and_a_used_output_dir(tmp_path):
    with pytest.raises(ValueError, match="sample_curve"):
        AuditOptions(samples=8, sample_curve=(1, 16))
    with pytest.raises(ValueError, match="attacks"):
        AuditOptions(attacks=("sampling", "oracle"))
    with pytest.raises(ValueError, match="relearn_steps"):
        AuditOptions(relearn_steps=(20, 10))
    assert check_output_dir(str(tmp_path)) == str(tmp_path)  # empty: fine
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="out_dir"):
        check_output_dir(str(tmp_path))
    assert (tmp_path / "keep.txt").read_text() == "user data"


# ---------------------------------------------------------------- on the toy memorizer (slow)

SMALL = AuditOptions(
    samples=4,
    sample_curve=(1, 4),
    temperatures=(1.0,),
    beam_width=2,
    prefix_lengths=(8,),
    shifts=(1,),
    shift_modes=("prepend",),
    dropout=(0.1,),
    relearn_steps=(3,),
    relearn_learning_rate=1e-3,
    batch_size=32,
    progress=False,
)


def _toy():
    return cached_toy(ToyConfig())


@pytest.fixture(scope="module")
def toy():
    return _toy()


@pytest.fixture(scope="module")
def unedited(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "out"
    rows = toy.train + toy.validation
    rng = np.random.default_rng(123)  # text the model never saw: uniform random windows
    fresh = rng.integers(0, toy.config.vocab, (len(rows), toy.config.length))
    unseen = [{"prefix_ids": w[:16].tolist(), "suffix_ids": w[16:].tolist()} for w in fresh]
    res = run_audit(
        toy.model, toy.model, {"mem": rows, "unseen": unseen}, toy.text, str(out), SMALL
    )
    return res, out


@pytest.mark.slow
def test_unedited_memorizer_is_fully_extractable(unedited):
    res, out = unedited
    mem = res["sets"]["mem"]
    assert mem["any_attack"]["exact"]["rate"] == 1.0
    assert mem["beam"]["exact"]["rate"] == 1.0 and mem["beam"]["rank_model"]["mean"] == 1.0
    assert mem["prefix"]["variants"]["full"]["exact"]["rate"] == 1.0
    curve = mem["sampling"]["temperatures"]["1.0"]["curve"]
    assert curve["4"]["exact"]["rate"] >= curve["1"]["exact"]["rate"] > 0
    for score in ("loss", "zlib", "min_k"):
        assert mem["membership"][score]["auc"]["value"] >= 0.95
    assert mem["membership"]["reference"]["auc"]["value"] == 0.5  # model = its own reference
    rl = res["relearning"]["clean"]["curve"]
    assert rl[0]["recitation"]["mem"]["exact"]["rate"] == 1.0 and rl[-1]["step"] == 3
    for name in (
        "report.md",
        "results.json",
        "examples/mem.jsonl",
        "figures/roc_mem.png",
        "figures/extraction_unseen.png",
        "figures/relearning.png",
    ):
        assert os.path.getsize(out / name) > 0
    text = (out / "report.md").read_text()
    assert "(n=16)" in text and "Wilson" in text
    assert json.loads((out / "results.json").read_text())["sets"]["mem"]["n"] == 16


@pytest.mark.slow
def test_text_never_seen_is_not_extracted_and_not_a_member(unedited, toy):
    res, _ = unedited
    unseen = res["sets"]["unseen"]
    assert unseen["any_attack"]["exact"]["k"] == 0 and unseen["any_attack"]["loose"]["k"] == 0
    # Membership of held-out clean windows against other held-out clean windows: chance.
    from kfac_mem.audit.membership import membership_inference

    rng = np.random.default_rng(9)
    clean = np.stack([toy.retain[i] for i in rng.permutation(len(toy.retain))[:64]])

    p = toy.model.params
    m = membership_inference(toy.model, p, toy.model, p, clean, toy.text, seed=0)
    for score in ("loss", "zlib", "min_k"):
        assert m[score]["auc"]["lo"] < 0.5 < m[score]["auc"]["hi"]


@pytest.mark.slow
@pytest.mark.multidevice
def test_one_and_eight_devices_give_the_same_audit(toy, mesh8, unedited):
    mesh, rules = mesh8
    shardings = models.language_model.param_shardings(toy.model.config, mesh, rules)
    eight = models.LanguageModel(
        toy.model.config, jax.device_put(toy.model.params, shardings), mesh=mesh, rules=rules
    )
    opts = AuditOptions(
        **{**SMALL.__dict__, "attacks": ("sampling", "beam", "prefix", "membership")}
    )
    got = run_audit(eight, eight, {"mem": toy.train + toy.validation}, toy.text, None, opts)
    want = unedited[0]["sets"]["mem"]
    g = got["sets"]["mem"]
    assert (
        g["sampling"]["temperatures"]["1.0"]["examples"]
        == want["sampling"]["temperatures"]["1.0"]["examples"]
    )
    for key in ("beam", "prefix"):
        assert [e["exact" if key == "beam" else "exact_variants"] for e in g[key]["examples"]] == [
            e["exact" if key == "beam" else "exact_variants"] for e in want[key]["examples"]
        ]
    np.testing.assert_allclose(
        [e["logp_model"] for e in g["beam"]["examples"]],
        [e["logp_model"] for e in want["beam"]["examples"]],
        atol=1e-3,
    )
    for score in ("loss", "zlib", "min_k"):
        assert g["membership"][score]["auc"]["value"] == pytest.approx(
            want["membership"][score]["auc"]["value"], abs=1e-9
        )


@pytest.mark.slow
def test_cli_writes_the_report_and_refuses_a_used_dir(toy, tmp_path):
    from kfac_mem.cli import main

    p = write_toy(toy, str(tmp_path / "toy"))
    out = tmp_path / "audit"
    argv = [
        "audit",
        "--model",
        p["model"],
        "--baseline",
        p["model"],
        "--memorized",
        f"val={p['validation']}",
        "--clean",
        p["text"],
        "--out",
        str(out),
        "--samples",
        "2",
        "--sample-curve",
        "1,2",
        "--temperatures",
        "1.0",
        "--beam-width",
        "2",
        "--prefix-lengths",
        "8",
        "--shifts",
        "1",
        "--dropout",
        "0.1",
        "--attacks",
        "sampling,beam,prefix,membership",
        "--no-progress",
    ]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["sets"]["val"]["any_attack"]["exact"]["rate"] == 1.0
    assert (out / "config.yaml").exists() and (out / "report.md").exists()
    assert main(argv) == 2  # the directory now holds a report: refused, nothing overwritten
