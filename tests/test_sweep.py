"""`kfac-mem sweep` (`experiments.run_memorization_sweep`): its choice and every number it reports
equal a brute-force loop over `kfac-mem edit`'s library edit (`editing.edit_model`) and
`kfac-mem evaluate`'s library evaluation (`evaluation.run_evaluation`) of every cell, with the same
rule; the CLI writes the documented files; bad grids are one-line errors naming the flag.

The model is the toy memorizer (tests/toy_memorizer.py: a 2-layer OLMo-2 trained in-process until
it recites its memorized windows), with sampled-label factors collected on its training mixture,
so edits of different strength recite differently.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from toy_memorizer import ToyConfig, cached_toy, write_toy

from kfac_mem.cli import main as cli_main
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import select_sites
from kfac_mem.data import Windows, array_fingerprint
from kfac_mem.decomposition.store import decompose_run
from kfac_mem.editing import EditOptions, edit_model, parse_plan
from kfac_mem.evaluation import perplexity, run_evaluation
from kfac_mem.experiments import MemorizationSweep, run_memorization_sweep
from kfac_mem.rundir import kind_of
from models import load_pretrained

LAYER_SETS = ((1,), (0, 1))
PROJECTION_SETS = (("gate", "up"), ("gate", "up", "down"))
RHOS = (0.5, 0.8, 0.95)
SVD_DROPS = (0.1, 0.5, 0.9)
BATCH = 8
WINDOW = 32  # the toy's window length


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mesh8):
    """(toy, model, eigen run, paths): the trained toy; its model as the CLI loads it (the
    default 8-device FSDP placement, so the library and the CLI share compiled programs); its
    factors' eigen run; its sets on disk (train / validation memorized windows, OOD quotes with
    8-token suffixes, held-out text)."""
    root = tmp_path_factory.mktemp("sweep")
    toy = cached_toy(ToyConfig())
    sites = select_sites(toy.model.linear_sites(), projections=["gate", "up", "down"])
    windows = Windows(toy.corpus, ("toy-mixture",), array_fingerprint(toy.corpus))
    run = collect(toy.model, windows, sites, str(root / "factors"), CollectConfig(batch_size=16),
                  progress=False)  # fmt: skip
    eigen = decompose_run(run, str(root / "eigen"))
    paths = write_toy(toy, str(root / "toy"))
    model = load_pretrained(paths["model"], mesh=mesh8[0], rules=mesh8[1])
    return toy, model, eigen, paths


def _evaluate(model, params, paths, sets, baseline=False):
    """`kfac-mem evaluate` (library): recitation of `sets` and perplexity of the text."""
    return run_evaluation(
        model,
        params=params,
        baseline_params=model.params if baseline else None,
        memorized={s: paths[s] for s in sets},
        texts=[paths["text"]],
        suites=["recitation", "perplexity"] if sets else ["perplexity"],
        window=WINDOW,
        batch_size=BATCH,
        log=None,
    )


def _plan(model, layers, projections, value):
    return parse_plan(
        {str(i): {p: value for p in projections} for i in layers}, model.linear_sites()
    )


@pytest.fixture(scope="module")
def brute(setup):
    """Every cell edited as `kfac-mem edit` does and evaluated as `kfac-mem evaluate` does."""
    _, model, eigen, paths = setup
    base = _evaluate(model, None, paths, [])["perplexity"]["text"]["perplexity"]
    rows = []
    options = EditOptions(compute_rank=False)
    for layers in LAYER_SETS:
        for projections in PROJECTION_SETS:
            for rho in RHOS:
                edited = edit_model(model, eigen, _plan(model, layers, projections, rho), options)
                res = _evaluate(model, edited.params, paths, ["train"])
                ppl = res["perplexity"]["text"]  # the text file is text.npy
                rows.append(
                    {
                        "cell": (layers, projections, rho),
                        "strict": res["recitation"]["train"]["strict"],
                        "loose": res["recitation"]["train"]["loose"],
                        "k": res["recitation"]["train"]["intervals"]["strict"]["k"],
                        "perplexity": ppl["perplexity"],
                        "ratio": ppl["perplexity"] / base,
                        "params": edited.params,
                    }
                )
    return rows


def _brute_choice(rows, limit):
    """The rule by hand: feasible cells (ratio ≤ limit) first, then the lowest strict
    recitation, then the lowest ratio; none feasible: the smallest excess."""
    feasible = [i for i, r in enumerate(rows) if r["ratio"] <= limit]
    if feasible:
        return min(feasible, key=lambda i: (rows[i]["strict"], rows[i]["ratio"], i))
    return min(range(len(rows)), key=lambda i: (rows[i]["ratio"] - limit, i))


def _sweep(setup, limit, **kw):
    _, model, eigen, paths = setup
    spec = MemorizationSweep(
        LAYER_SETS,
        PROJECTION_SETS,
        RHOS,
        limit,
        svd_drops=SVD_DROPS,
        seed=5,
        batch_size=BATCH,
        **kw,
    )
    return run_memorization_sweep(
        model,
        eigen,
        spec,
        train=paths["train"],
        heldout={"val": paths["validation"], "ood": paths["ood"]},
        texts=[paths["text"]],
        window=WINDOW,
        text_windows=None,
        log=None,
    )


def test_sweep_choice_and_numbers_equal_brute_force_edit_and_evaluate(setup, brute):
    toy, model, eigen, paths = setup
    n_train, n_text = len(toy.train), len(toy.text)
    assert len({r["strict"] for r in brute}) >= 3, "cells should recite differently"
    ratios = sorted(r["ratio"] for r in brute)
    limit = (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2  # half the cells pass
    res = _sweep(setup, limit)
    assert len(res["cells"]) == len(brute) == len(LAYER_SETS) * len(PROJECTION_SETS) * len(RHOS)
    for row, ref in zip(res["cells"], brute, strict=True):
        assert (tuple(row["layers"]), tuple(row["projections"]), row["rho"]) == ref["cell"]
        train = row["recitation"]["train"]
        assert train["intervals"]["strict"]["k"] == ref["k"] and train["n"] == n_train
        assert (train["strict"], train["loose"]) == (ref["strict"], ref["loose"])
        assert train["intervals"]["strict"]["lo"] <= train["strict"]
        assert row["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-6)
        assert row["ppl_ratio"] == pytest.approx(ref["ratio"], rel=1e-6)
        iv = row["ppl_ratio_interval"]
        assert iv["lo"] <= row["ppl_ratio"] <= iv["hi"] and iv["n"] == n_text
        assert row["feasible"] == (ref["ratio"] <= limit)
    expected = _brute_choice(brute, limit)
    assert res["chosen"]["index"] == expected and res["cells"][expected]["chosen"]
    assert sum(r["chosen"] for r in res["cells"]) == 1 and res["chosen"]["feasible"]
    assert res["unedited"]["recitation"]["train"]["strict"] == 1.0
    assert res["unedited"]["ppl_ratio"] == 1.0

    # Held-out report: the chosen edit and the unedited model, each equal to `evaluate` of the
    # same weights; the paired test counts the same discordant examples.
    chosen = brute[expected]
    ref = _evaluate(model, chosen["params"], paths, ["validation", "ood"], True)["recitation"]
    kfac, unedited = res["report"]["kfac"], res["report"]["unedited"]
    for name, file in (("val", "validation"), ("ood", "ood")):
        assert kfac["recitation"][name]["outcomes"] == ref[file]["outcomes"]
        assert unedited["recitation"][name]["outcomes"] == ref[file]["baseline"]["outcomes"]
        test = res["paired"][name]["kfac_vs_unedited"]["strict"]["mcnemar"]
        a, b = ref[file]["outcomes"]["strict"], ref[file]["baseline"]["outcomes"]["strict"]
        assert test["a_only"] == sum(x and not y for x, y in zip(a, b))
        assert test["b_only"] == sum(y and not x for x, y in zip(a, b))
        assert set(res["paired"][name]) == {"kfac_vs_unedited", "kfac_vs_svd", "kfac_vs_random"}
    assert kfac["recitation"]["train"]["strict"] == chosen["strict"]
    assert kfac["perplexity"] == pytest.approx(chosen["perplexity"], rel=1e-6)

    # SVD control: the drop whose perplexity is closest to the chosen edit's (by brute force).
    layers, projections, rho = chosen["cell"]
    gaps = []
    for drop in SVD_DROPS:
        plan = _plan(model, layers, projections, drop)
        svd = edit_model(model, None, plan, EditOptions(method="svd"))
        gaps.append(
            abs(perplexity(model, toy.text, svd.params)["perplexity"] - chosen["perplexity"])
        )
    assert res["controls"]["svd"]["drop"] == SVD_DROPS[int(np.argmin(gaps))]
    # Random bases: the same kept set, seed 5, exactly `edit --method random --seed 5`.
    plan = _plan(model, layers, projections, rho)
    rand = edit_model(model, eigen, plan, EditOptions(method="random", seed=5))
    ref_ppl = perplexity(model, toy.text, rand.params)["perplexity"]
    assert res["report"]["random"]["perplexity"] == pytest.approx(ref_ppl, rel=1e-6)
    kept = {m["id"]: m["kept"] for m in res["edit"]["matrices"]}
    assert kept == {m["id"]: m["kept"] for m in rand.record["matrices"]}


def test_infeasible_limit_chooses_the_closest_cell(setup, brute):
    """With a limit no cell meets, the choice is the cell of the smallest perplexity excess."""
    limit = min(r["ratio"] for r in brute) * 0.999
    res = _sweep(setup, limit, controls=())
    assert res["chosen"]["index"] == _brute_choice(brute, limit)
    assert not res["chosen"]["feasible"] and set(res["report"]) == {"unedited", "kfac"}
    assert set(res["paired"]["val"]) == {"kfac_vs_unedited"}


def test_cli_sweep_end_to_end(setup, tmp_path, capsys):
    """The CLI writes results.json, report.md and config.yaml into a "sweep" directory, the
    chosen edit as an Orbax model and an HF export of it."""
    toy, _, eigen, paths = setup
    out, edit_dir, hf_dir = tmp_path / "sweep", tmp_path / "edited", tmp_path / "hf"
    argv = ["sweep", "--model", paths["model"], "--eigen", eigen.directory]
    argv += ["--train", paths["train"], "--heldout", f"val={paths['validation']}"]
    argv += ["--text", paths["text"], "--window", str(WINDOW), "--batch-size", str(BATCH)]
    argv += ["--layer-sets", "1,0-1", "--projection-sets", "gate+up", "--rhos", "0.5,0.95"]
    argv += ["--svd-drops", "0.1,0.5", "--max-perplexity-ratio", "inf", "--out", str(out)]
    assert cli_main([*argv, "--write-edit", str(edit_dir), "--export-hf", str(hf_dir)]) == 0
    printed = capsys.readouterr().out
    assert "chosen (cell" in printed and "McNemar" in printed
    assert kind_of(str(out)) == "sweep" and kind_of(str(edit_dir)) == "model"
    assert kind_of(str(hf_dir)) == "hf-export"
    assert {"results.json", "report.md", "config.yaml"} <= set(os.listdir(out))
    res = json.loads((out / "results.json").read_text())
    n = len(toy.train)
    assert res["format"] == "kfac-mem-sweep-v1" and res["sets"]["train"]["n"] == n
    assert res["spec"]["max_perplexity_ratio"] is None and not res["rule"]["limits"]
    # No limit: the lowest train recitation wins, ties by perplexity.
    key = [(c["recitation"]["train"]["strict"], c["ppl_ratio"]) for c in res["cells"]]
    assert res["chosen"]["index"] == min(range(len(key)), key=lambda i: key[i])
    report = (out / "report.md").read_text()
    assert report.count("\n| ") >= len(res["cells"]) + 4 and "**Chosen**" in report
    for needle in ("Wilson", "McNemar", "kept share", "perplexity-matched", f"/{n})"):
        assert needle in report, needle
    # The written edit is the chosen one: same weights as the report's K-FAC row.
    edited = load_pretrained(str(edit_dir))
    ppl = perplexity(edited, toy.text)["perplexity"]
    assert ppl == pytest.approx(res["report"]["kfac"]["perplexity"], rel=1e-5)
    assert res["edit"]["orbax"] == os.path.realpath(edit_dir)
    assert {"config.json", "model.safetensors", "provenance.json"} <= set(os.listdir(hf_dir))
    assert load_pretrained(str(hf_dir)).fingerprint() == edited.fingerprint()
    # Rerun refused without --overwrite (nothing replaced), accepted with it.
    assert cli_main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert cli_main([*argv[:-4], "--rhos", "0.95", "--controls", "none", "--out", str(out),
                     "--overwrite"]) == 0  # fmt: skip
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 2


@pytest.mark.parametrize(
    ("change", "flag", "words"),
    [
        (("--rhos", ""), "--rhos", "empty"),
        (("--rhos", "0.5,1.5"), "--rhos", "outside (0, 1]"),
        (("--rhos", "0"), "--rhos", "outside (0, 1]"),
        (("--layer-sets", ""), "--layer-sets", "empty"),
        (("--layer-sets", "0-x"), "--layer-sets", "expects"),
        (("--layer-sets", "0,5"), "--layer-sets", "0..1"),
        (("--projection-sets", "gate+upp"), "--projection-sets", "unknown projections ['upp']"),
        (("--projection-sets", "q"), "--layer-sets", "does not have"),
        (("--controls", "svd,bsn"), "--controls", "unknown"),
        (("--svd-drops", "1.0"), "--svd-drops", "[0, 1)"),
    ],
)
def test_cli_sweep_bad_input_is_one_line_naming_the_flag(
    setup, tmp_path, capsys, change, flag, words
):
    _, _, eigen, paths = setup
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", paths["model"], "--eigen", eigen.directory]
    argv += ["--train", paths["train"], "--text", paths["text"], "--window", str(WINDOW)]
    argv += ["--layer-sets", "0", "--projection-sets", "gate+up", "--rhos", "0.5"]
    argv += ["--controls", "svd,random", "--svd-drops", "0.5", "--out", str(out)]
    i = argv.index(change[0])
    argv[i + 1] = change[1]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kfac-mem sweep: error: "), err
    assert flag in err and words in err, err
    assert not out.exists()  # nothing written


def test_teacher_forced_measure_equals_greedy_strict(setup):
    """The shared measure's two recitation modes agree on strict recitation (a suffix is recited
    exactly iff every suffix token is the argmax given the true prefix and suffix so far), on
    sets of two suffix lengths; the perplexity ratio and its interval do not depend on the mode."""
    from kfac_mem.experiments import EditCell, edited_params, memorization_measure

    toy, model, eigen, _ = setup
    sets = {"train": toy.train, "ood": toy.ood}  # suffixes of 16 and 8 tokens
    greedy = memorization_measure(model, sets, toy.text, batch_size=BATCH)
    forced = memorization_measure(
        model, sets, toy.text, recitation_mode="teacher-forced", batch_size=BATCH
    )
    for rho in (0.5, 0.8):
        params = edited_params(model, eigen, EditCell((0, 1), ("gate", "up"), rho))
        g, f = greedy(params), forced(params)
        for name in sets:
            assert f["recitation"][name]["n"] == g["recitation"][name]["n"]
            assert f[f"strict_{name}"] == g[f"strict_{name}"]
            assert (
                f["recitation"][name]["intervals"]["strict"]
                == g["recitation"][name]["intervals"]["strict"]
            )
        assert (
            f["ppl_ratio"] == g["ppl_ratio"] and f["ppl_ratio_interval"] == g["ppl_ratio_interval"]
        )
    with pytest.raises(ValueError, match="recitation_mode"):
        memorization_measure(model, sets, toy.text, recitation_mode="beam")
