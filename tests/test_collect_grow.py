"""Factor runs that grow: prefix-stable windows fingerprinted by their source, the one rule that
joins documents, extending a finished run, and a time budget that leaves a resumable run."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import select_sites
from kfac_mem.data import join_documents, load_windows
from kfac_mem.errors import InputError
from models import load_pretrained

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
    done = collect(olmo8, data, sites, out, cfg, progress=False)
    assert done.complete and done.metadata["progress"]["stopped"] is None
    full = collect(olmo8, data, sites, str(tmp_path / "full"), cfg, progress=False)
    assert_same_factors(done, full)
    with pytest.raises(InputError, match=r"`time_budget_s` must be > 0"):
        collect(olmo8, data, sites, out, cfg, progress=False, time_budget_s=0)
