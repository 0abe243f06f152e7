"""Factor runs that grow: prefix-stable windows fingerprinted by their source, the one rule that
joins documents, extending a finished run, a time budget that leaves a resumable run, and merging
runs (exact sums and counts, and every refusal)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from kfac_mem.cli import main as cli_main
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.merge import merge_factor_runs
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import select_sites
from kfac_mem.collection.store import load_factors
from kfac_mem.data import join_documents, load_windows
from kfac_mem.errors import InputError, OutputDirError
from models import load_pretrained
from tests.factor_fixtures import write_factor_run

SEQ = 12


@pytest.fixture(scope="module")
def olmo8(mesh8):
    return load_pretrained("tiny-olmo2", mesh=mesh8[0], rules=mesh8[1])


@pytest.fixture(scope="module")
def word_tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    vocab = {w: i for i, w in enumerate(["[UNK]", "a", "b", "c", "d", "e", "<eos>"])}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def _tokens_file(path, n, seed):
    np.save(path, np.random.default_rng(seed).integers(0, 256, (n, SEQ)).astype(np.int32))
    return str(path)


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def assert_same_factors(run, ref, tol=1e-5):
    assert run.n_tokens == ref.n_tokens  # exact integer counts
    for sid in ref:
        assert rel(run[sid].A, ref[sid].A) < tol, sid
        assert rel(run[sid].G, ref[sid].G) < tol, sid


# --- windows ---------------------------------------------------------------------------------


def test_join_rule_brute_force_and_the_same_in_collect_evaluate_analyze(tmp_path, word_tokenizer):
    from kfac_mem.analysis.sets import load_set
    from kfac_mem.evaluation.text import token_documents, windows_from_sources

    texts = ["a b c", "d", "e e a b", "c c c c c", "a"]
    path = _jsonl(tmp_path / "docs.jsonl", texts)
    ids = [word_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    for eos in (6, None):
        # Brute force: every document followed by EOS (nothing without one), cut, tail dropped.
        stream = [t for doc in ids for t in [*doc, *([] if eos is None else [eos])]]
        n = len(stream) // 4
        expected = np.asarray(stream[: n * 4]).reshape(n, 4)
        np.testing.assert_array_equal(join_documents(ids, 4, eos), expected)
        collected = load_windows([path], 4, word_tokenizer, eos_id=eos).tokens
        evaluated = windows_from_sources([path], word_tokenizer, 4, eos)
        analyzed = load_set("clean", path, word_tokenizer, seq_len=4, eos_id=eos).tokens
        for got in (collected, evaluated, analyzed):
            np.testing.assert_array_equal(got, expected)
    # Mining reads the same documents, tokenized the same way, and never joins them.
    mined = [d.ids.tolist() for d in token_documents(path, word_tokenizer)]
    assert mined == ids
    # Text needs the rule chosen: no silent default.
    with pytest.raises(InputError, match=r"`eos_id`"):
        load_windows([path], 4, word_tokenizer)


def test_windows_are_a_prefix_stable_stream_fingerprinted_by_source(tmp_path, word_tokenizer):
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(list("abcde"), rng.integers(1, 9))) for _ in range(60)]
    path = _jsonl(tmp_path / "c.jsonl", texts)
    full = load_windows([path], 8, word_tokenizer, eos_id=6)
    for budget in (1, 8, 40, 41, 100):
        part = load_windows([path], 8, word_tokenizer, max_tokens=budget, eos_id=6)
        assert len(part) == max(1, budget // 8)
        np.testing.assert_array_equal(part.tokens, full.tokens[: len(part)])
        assert part.fingerprint == full.fingerprint  # the budget is not the corpus
    desc = full.describe()
    assert desc["join"] == "eos:6" and desc["n_windows"] == len(full)
    # The corpus moves: same content, same fingerprint.
    moved = tmp_path / "elsewhere" / "c.jsonl"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    assert load_windows([str(moved)], 8, word_tokenizer, eos_id=6).fingerprint == full.fingerprint
    # What changes the stream changes the fingerprint; seq_len changes the windows, not the stream.
    other_len = load_windows([path], 4, word_tokenizer, eos_id=6)
    assert other_len.fingerprint != full.fingerprint and other_len.stream == full.stream
    assert load_windows([path], 8, word_tokenizer, eos_id=None).stream != full.stream
    _jsonl(moved, [*texts[:-1], "a a"])
    assert load_windows([str(moved)], 8, word_tokenizer, eos_id=6).stream != full.stream
    # .npy windows: the fingerprint of every window given, whatever the budget.
    npy = _tokens_file(tmp_path / "w.npy", 10, 0)
    assert load_windows([npy], max_tokens=3 * SEQ).fingerprint == load_windows([npy]).fingerprint


# --- extend and time budget -------------------------------------------------------------------


def _sites(model):
    return select_sites(model.linear_sites(), layers=[1], projections=["gate", "up"])


def test_extend_equals_single_run_with_the_larger_budget(olmo8, tmp_path):
    data = _tokens_file(tmp_path / "corpus.npy", 32, 1)
    sites = _sites(olmo8)
    for mode, first in (("sampled", 16), ("empirical", 12)):
        # sampled: a budget on a batch boundary continues the very same batches and label keys;
        # empirical: any budget (12 = one full batch + one of 4), the labels are the gold tokens.
        cfg = CollectConfig(mode=mode, batch_size=8, vocab_chunk=64)
        out = str(tmp_path / f"grow-{mode}")
        small = collect(
            olmo8, load_windows([data], max_tokens=first * SEQ), sites, out, cfg, progress=False
        )
        assert small.complete and small.info["windows_done"] == first
        grown = collect(olmo8, load_windows([data]), sites, out, cfg, progress=False)
        single = collect(
            olmo8, load_windows([data]), sites, str(tmp_path / f"one-{mode}"), cfg, progress=False
        )
        assert grown.complete and grown.info["windows_done"] == 32
        assert grown.metadata["corpus"]["n_windows"] == 32
        assert_same_factors(grown, single)
    # The same budget again: already complete, nothing changes. A smaller one: refused.
    before = os.path.getmtime(os.path.join(out, "metadata.json"))
    again = collect(olmo8, load_windows([data]), sites, out, cfg, progress=False)
    assert again.n_tokens == grown.n_tokens
    assert os.path.getmtime(os.path.join(out, "metadata.json")) == before
    with pytest.raises(InputError, match=r"already holds 32 windows .* never shrinks"):
        collect(olmo8, load_windows([data], max_tokens=8 * SEQ), sites, out, cfg, progress=False)
    # Another corpus is still refused.
    other = _tokens_file(tmp_path / "other.npy", 32, 2)
    with pytest.raises(ValueError, match=r"differs in.*corpus"):
        collect(olmo8, load_windows([other]), sites, out, cfg, progress=False)


def test_time_budget_leaves_a_resumable_run_equal_to_an_uninterrupted_one(olmo8, tmp_path):
    data = load_windows([_tokens_file(tmp_path / "corpus.npy", 24, 3)])
    sites = _sites(olmo8)
    cfg = CollectConfig(mode="sampled", batch_size=8, vocab_chunk=64)
    out = str(tmp_path / "budget")
    # A budget spent before the first step still runs one step per call, then checkpoints.
    part = collect(olmo8, data, sites, out, cfg, progress=False, time_budget_s=1e-6)
    assert not part.complete and part.info["windows_done"] == 8
    assert part.metadata["progress"]["stopped"] == "time_budget"
    assert part.metadata["corpus"]["n_windows"] == 24
    with pytest.raises(InputError, match=r"incomplete \(8 of 24 windows\).*`allow_incomplete`"):
        merge_factor_runs([out, write_factor_run(str(tmp_path / "fx"), olmo8, sites)], "m")
    done = collect(olmo8, data, sites, out, cfg, progress=False)
    assert done.complete and done.metadata["progress"]["stopped"] is None
    full = collect(olmo8, data, sites, str(tmp_path / "full"), cfg, progress=False)
    assert_same_factors(done, full)
    with pytest.raises(InputError, match=r"`time_budget_s` must be > 0"):
        collect(olmo8, data, sites, out, cfg, progress=False, time_budget_s=0)


# --- merge ------------------------------------------------------------------------------------


def test_merge_equals_single_run_over_the_concatenated_data(olmo8, tmp_path):
    a = _tokens_file(tmp_path / "a.npy", 16, 4)
    b = _tokens_file(tmp_path / "b.npy", 12, 5)
    sites = _sites(olmo8)
    cfg = CollectConfig(mode="empirical", batch_size=8, vocab_chunk=64)
    ra = collect(olmo8, load_windows([a]), sites, str(tmp_path / "ra"), cfg, progress=False)
    rb = collect(olmo8, load_windows([b]), sites, str(tmp_path / "rb"), cfg, progress=False)
    single = collect(olmo8, load_windows([a, b]), sites, str(tmp_path / "ab"), cfg, progress=False)
    merged = merge_factor_runs([ra.directory, rb.directory], str(tmp_path / "merged"))
    assert merged.n_tokens == ra.n_tokens + rb.n_tokens == single.n_tokens == 28 * (SEQ - 1)
    assert_same_factors(merged, single)
    meta = merged.metadata
    assert meta["engine"] == "merge" and merged.complete and meta["mode"] == "empirical"
    assert [leaf["path"] for leaf in meta["merged_from"]] == [ra.directory, rb.directory]
    assert [leaf["windows"] for leaf in meta["merged_from"]] == [[0, 16], [0, 12]]
    # The same windows twice (a copy of a run) with the same labels: refused.
    shutil.copytree(ra.directory, tmp_path / "ra-copy")
    with pytest.raises(InputError, match=r"overlapping windows .* count those windows twice"):
        merge_factor_runs([ra.directory, str(tmp_path / "ra-copy")], str(tmp_path / "m2"))
    with pytest.raises(InputError, match="twice"):
        merge_factor_runs([ra.directory, ra.directory], str(tmp_path / "m3"))
    # ... also when one of them is inside an earlier merge (its sources are recorded).
    with pytest.raises(InputError, match=r"overlapping windows"):
        merge_factor_runs([merged.directory, str(tmp_path / "ra-copy")], str(tmp_path / "m4"))
    # No collection continues a merged run.
    with pytest.raises(InputError, match=r"merged factor run"):
        collect(olmo8, load_windows([a]), sites, merged.directory, cfg, progress=False)


def _edit_metadata(run_dir, **changes):
    path = os.path.join(run_dir, "metadata.json")
    meta = json.load(open(path))
    meta.update(changes)
    with open(path, "w") as f:
        json.dump(meta, f)
    return run_dir


def test_merge_sums_exactly_and_refuses_what_does_not_merge(olmo8, mesh8, tmp_path):
    sites = _sites(olmo8)
    r1 = write_factor_run(str(tmp_path / "r1"), olmo8, sites, n_tokens=300, seed=1)
    r2 = write_factor_run(str(tmp_path / "r2"), olmo8, sites, n_tokens=700, seed=2)
    merged = merge_factor_runs([r1, r2], str(tmp_path / "m"))
    f1, f2 = load_factors(r1), load_factors(r2)
    assert merged.n_tokens == 1000
    for s in sites:  # brute force: token-weighted means of the two runs
        A = (300 * f1[s.id].A.astype(np.float64) + 700 * f2[s.id].A) / 1000
        G = (300 * f1[s.id].G.astype(np.float64) + 700 * f2[s.id].G) / 1000
        assert rel(merged[s.id].A, A) < 1e-6 and rel(merged[s.id].G, G) < 1e-6
    # A merged run is a factor run: decompose reads it.
    from kfac_mem.decomposition.store import decompose_run

    eig = decompose_run(merged, str(tmp_path / "eig"), *mesh8)
    assert eig.factor_run["n_tokens"] == 1000
    # Differences that do not merge, each named by its metadata key.
    cases = {
        "mode": {"mode": "empirical"},
        "accumulate_dtype": {"accumulate_dtype": "float64"},
        "model.fingerprint": {"model": {"fingerprint": "0" * 16}},
    }
    for key, change in cases.items():
        other = str(tmp_path / f"x-{key}")
        shutil.copytree(r2, other)
        _edit_metadata(other, **change)
        with pytest.raises(InputError, match=rf'metadata key "{key}"'):
            merge_factor_runs([r1, other], str(tmp_path / "never"))
    fewer = write_factor_run(str(tmp_path / "fewer"), olmo8, sites[:1])
    with pytest.raises(InputError, match=r'metadata key "sites"'):
        merge_factor_runs([r1, fewer], str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")
    # Incomplete runs only when asked; recorded in the result.
    _edit_metadata(r2, progress={"n_tokens": 700, "windows_done": 5, "complete": False})
    with pytest.raises(InputError, match=r"r2 is incomplete"):
        merge_factor_runs([r1, r2], str(tmp_path / "inc"))
    inc = merge_factor_runs([r1, r2], str(tmp_path / "inc"), allow_incomplete=True)
    assert inc.n_tokens == 1000 and not inc.complete
    # Output: an earlier merge is replaced only with `overwrite`, a collected run never.
    with pytest.raises(OutputDirError, match="pass `overwrite`"):
        merge_factor_runs([r1, r2], inc.directory, allow_incomplete=True)
    merge_factor_runs([r1, r2], inc.directory, allow_incomplete=True, overwrite=True)
    with pytest.raises(OutputDirError, match="replaces only an earlier merge"):
        merge_factor_runs([r1, r2], fewer, allow_incomplete=True, overwrite=True)
    with pytest.raises(OutputDirError, match="input"):
        merge_factor_runs([r1, r2], r1, allow_incomplete=True, overwrite=True)


def test_overlap_rule_on_corpus_streams(olmo8, tmp_path):
    """Same stream + overlapping ranges + same labels is refused; different seeds (sampled),
    disjoint ranges or different corpora merge."""
    sites = _sites(olmo8)

    def run(name, seed, corpus, windows_done, mode="sampled"):
        d = write_factor_run(str(tmp_path / name), olmo8, sites, n_tokens=100, seed=seed)
        progress = {"n_tokens": 100, "windows_done": windows_done, "complete": True}
        return _edit_metadata(d, corpus=corpus, progress=progress, seed=seed, mode=mode)

    text = {"fingerprint": "f8", "stream": "s", "seq_len": 8, "n_windows": 10}
    text4 = {"fingerprint": "f4", "stream": "s", "seq_len": 4, "n_windows": 20}  # same text
    other = {"fingerprint": "g", "seq_len": 8, "n_windows": 10}
    a = run("a", 0, text, 10)
    ok = {"seed": run("b", 1, text, 10), "corpus": run("c", 0, other, 10)}
    for name, path in ok.items():
        merge_factor_runs([a, path], str(tmp_path / f"ok-{name}"))
    with pytest.raises(InputError, match=r"the same seed 0"):
        merge_factor_runs([a, run("d", 0, text, 3)], str(tmp_path / "no1"))
    with pytest.raises(InputError, match=r"overlapping windows"):  # other window length, same text
        merge_factor_runs([a, run("e", 0, text4, 5)], str(tmp_path / "no2"))
    ea, eb = run("ea", 0, text, 10, "empirical"), run("eb", 1, text, 10, "empirical")
    with pytest.raises(InputError, match=r"gold labels"):  # seeds do not matter for gold labels
        merge_factor_runs([ea, eb], str(tmp_path / "no3"))


def test_cli_time_budget_extend_and_merge(tmp_path, capsys):
    a = _tokens_file(tmp_path / "a.npy", 16, 6)
    b = _tokens_file(tmp_path / "b.npy", 16, 7)
    common = ["--model", "tiny-olmo2", "--layers", "1", "--projections", "up", "--no-progress"]
    common += ["--batch-size", "8", "--mode", "empirical"]
    ra, rb = str(tmp_path / "ra"), str(tmp_path / "rb")
    argv = ["collect", *common, "--data", a, "--out", ra]
    assert cli_main([*argv, "--time-budget", "0.000001"]) == 0
    assert "stopped by the time budget after 8 of 16 windows" in capsys.readouterr().out
    assert cli_main([*argv, "--max-tokens", str(12 * SEQ)]) == 0  # continue, to 12 windows only
    assert load_factors(ra).complete and load_factors(ra).info["windows_done"] == 12
    assert cli_main(argv) == 0  # extend to the whole file
    assert load_factors(ra).info["windows_done"] == 16
    assert cli_main(["collect", *common, "--data", b, "--out", rb]) == 0
    capsys.readouterr()
    out = str(tmp_path / "m")
    assert cli_main(["merge", ra, rb, "--out", out]) == 0
    assert "merged 2 runs: 352 positions" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    assert cli_main(["merge", ra, os.path.join(out, "..", "m"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "RUN" in err and "overlapping windows" in err and "--data" not in err
