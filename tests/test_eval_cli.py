"""`kfac-mem evaluate` and `kfac-mem mine` end to end on the tiny-olmo2 preset (8 devices)."""

import json
import os

import numpy as np
import pytest

import models
from kfac_mem.cli import main
from kfac_mem.evaluation import recitation


@pytest.fixture(scope="module")
def tiny8(mesh8):
    """The model the CLI loads for `--model tiny-olmo2` (seed 0, default fsdp mesh)."""
    return models.load_pretrained("tiny-olmo2", mesh=mesh8[0], rules=mesh8[1])


def _greedy_rows(model, n, prefix_len, suffix_len, seed):
    """Rows whose suffix is the model's own greedy continuation of a random prefix."""
    rng = np.random.default_rng(seed)
    rows = [
        {"prefix_ids": rng.integers(0, 256, prefix_len).tolist(), "suffix_ids": [0] * suffix_len}
        for _ in range(n)
    ]
    for r, out in zip(rows, recitation(model, rows, batch_size=8)["rows"]):
        r["suffix_ids"] = out["generated_ids"]
    return rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_evaluate_cli(tiny8, tmp_path, capsys):
    rows = _greedy_rows(tiny8, 4, 8, 8, seed=0)
    rows[3]["suffix_ids"][2] = (rows[3]["suffix_ids"][2] + 1) % 256  # d = 2 of 8: loose only
    rows[3]["suffix_ids"][5] = (rows[3]["suffix_ids"][5] + 1) % 256
    mem = _jsonl(tmp_path / "mem.jsonl", rows)
    text = tmp_path / "held.npy"
    np.save(text, np.random.default_rng(1).integers(0, 256, (6, 16)))
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--model",
        "tiny-olmo2",
        "--baseline",
        "tiny-olmo2",
        "--memorized",
        f"mem={mem}",
        "--text",
        str(text),
        "--window",
        "16",
        "--suites",
        "recitation,perplexity,ndcg",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    m = res["recitation"]["mem"]
    assert (m["strict"], m["loose"], m["n"]) == (0.75, 1.0, 4)
    assert m["mean_distance"] == pytest.approx(0.25 / 4)
    assert m["baseline"]["strict"] == 0.75
    assert [r["distance"] for r in m["rows"]] == [0, 0, 0, 2] and m["rows"][3]["line"] == 4
    assert os.path.isfile(out / "recitation_mem.jsonl") and os.path.isfile(out / "config.yaml")
    ppl = res["perplexity"]["held"]
    assert ppl["tokens"] == 6 * 15 and ppl["baseline"]["perplexity"] == pytest.approx(
        ppl["perplexity"]
    )
    assert res["ndcg"]["held"]["ndcg"] == pytest.approx(1.0)
    assert res["ndcg"]["held"]["baseline_fingerprint"] == tiny8.fingerprint()
    assert os.path.basename(res["ndcg"]["held"]["cache"]).startswith(f"top10-{tiny8.fingerprint()}")
    assert "strict 0.750" in capsys.readouterr().out


def test_evaluate_cli_bad_input(tmp_path, capsys):
    bad = _jsonl(
        tmp_path / "bad.jsonl", [{"prefix_ids": [1, 2], "suffix_ids": [3]}, {"prefix_ids": [1, 2]}]
    )
    base = [
        "evaluate",
        "--model",
        "tiny-olmo2",
        "--suites",
        "recitation",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*base, "--memorized", f"m={bad}"]) == 2
    assert "bad.jsonl:2: missing field(s) ['suffix_ids']" in capsys.readouterr().err
    assert main([*base[:-4], "--suites", "recitation,bogus", "--out", str(tmp_path / "o")]) == 2
    assert "Unknown suite(s) ['bogus']" in capsys.readouterr().err
    assert main([*base[:-4], "--tasks", "maths", "--out", str(tmp_path / "o")]) == 2
    assert "Unknown task or group 'maths'" in capsys.readouterr().err


def test_mine_cli(tiny8, tmp_path):
    recited = _greedy_rows(tiny8, 6, 8, 8, seed=2)
    rng = np.random.default_rng(3)
    docs = [r["prefix_ids"] + r["suffix_ids"] for r in recited]
    docs += rng.integers(0, 256, (10, 16)).tolist()
    order = rng.permutation(len(docs))
    corpus = tmp_path / "docs.npy"
    np.save(corpus, np.asarray(docs)[order])
    out = tmp_path / "mined"
    assert (
        main(
            [
                "mine",
                "--model",
                "tiny-olmo2",
                "--corpus",
                str(corpus),
                "--prefix-len",
                "8",
                "--suffix-len",
                "8",
                "--stride",
                "16",
                "--val-fraction",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    found = []
    for split in ("train", "validation"):
        found += [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]
    assert {tuple(r["prefix_ids"] + r["suffix_ids"]) for r in found} == {tuple(d) for d in docs[:6]}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["candidates"], summary["memorized"], summary["train"]) == (16, 6, 3)
    assert all(r["corpus"] == str(corpus) and r["start"] == 0 for r in found)


def test_evaluate_checks_every_suite_before_running_any(tiny8, tmp_path, capsys):
    """A tokenizer-less model with only --memorized: by default the suites it cannot run are
    skipped with the reason (and recitation runs); named explicitly, such a suite is a one-line
    error before anything is written."""
    mem = _jsonl(tmp_path / "mem.jsonl", _greedy_rows(tiny8, 2, 8, 8, seed=4))
    out = tmp_path / "eval"
    base = ["evaluate", "--model", "tiny-olmo2", "--memorized", f"m={mem}"]
    assert main([*base, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["suites"] == ["recitation"] and res["recitation"]["m"]["strict"] == 1.0
    assert set(res["skipped"]) == {"perplexity", "ndcg", "tasks"}
    assert "tokenizer" in res["skipped"]["tasks"] and "--baseline" in capsys.readouterr().out
    for suites, needs in (("recitation,tasks", "tokenizer"), ("perplexity", "tokenizer")):
        bad = tmp_path / f"bad-{needs}-{suites}"
        assert main([*base, "--suites", suites, "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needs in err, err
        assert ("--suites" in err or "--text" in err) and not bad.exists()
    assert main([*base, "--suites", "ndcg", "--out", str(tmp_path / "n")]) == 2
    assert "--baseline" in capsys.readouterr().err


def test_evaluate_warns_about_text_the_model_was_tuned_on(tmp_path, capsys):
    """The committed demo model was trained on LAMBADA passages (its provenance.json says so):
    perplexity on bundled lambada draws a one-line warning on stderr, also for a model edited
    from it (followed through model_config.json's source); the default text (coqa) none."""
    from kfac_mem.evaluation.provenance import tuned_texts
    from kfac_mem.evaluation.text import DEFAULT_TEXT

    asset = os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "kfac_mem/demo/assets/demo-olmo2"
    )
    if not os.path.isfile(os.path.join(asset, "provenance.json")):
        pytest.skip("the committed demo model is not in this checkout")
    assert set(tuned_texts(asset)) == {"lambada"} and DEFAULT_TEXT not in tuned_texts(asset)
    model = models.load_pretrained(asset)
    edited = models.save_model(model, str(tmp_path / "edited"), metadata={"edit": {"plan": {}}})
    assert set(tuned_texts(edited)) == {"lambada"}
    assert tuned_texts("tiny-olmo2") == {}
    base = ["evaluate", "--suites", "perplexity", "--limit", "2", "--window", "32"]
    assert main([*base, "--model", edited, "--text", "lambada", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "warning" in x]
    assert "--text lambada" in line and "held out" in line and "provenance.json" in line
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert len(res["warnings"]) == 1 and "lambada" in res["perplexity"]
    assert main([*base, "--model", asset, "--out", str(tmp_path / "b")]) == 0
    assert "warning" not in capsys.readouterr().err
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert list(res["perplexity"]) == ["coqa"] and res["warnings"] == []
