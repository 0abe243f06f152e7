"""Evaluation metrics against independent implementations: Levenshtein, recitation thresholds,
nDCG, perplexity and continuation log-likelihoods (vs numpy from full logits), input errors."""

import functools
import gzip
import json
import math

import numpy as np
import pytest

import models
from kfac_mem.evaluation import levenshtein, ndcg_from_topk, perplexity, read_memorized
from kfac_mem.evaluation.batching import length_bucket
from kfac_mem.evaluation.levenshtein import recitation_match
from kfac_mem.evaluation.task_eval import score_continuations
from kfac_mem.evaluation.text import windows_from_sources


def brute_levenshtein(a, b):
    """Textbook recursion (memoized), written independently of the DP under test."""
    a, b = tuple(a), tuple(b)

    @functools.cache
    def d(i, j):
        if i == 0:
            return j
        if j == 0:
            return i
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def test_levenshtein_hand_cases():
    assert levenshtein([], []) == 0
    assert levenshtein([1, 2, 3], []) == 3
    assert levenshtein([], [4]) == 1
    assert levenshtein([1, 2, 3], [1, 2, 3]) == 0
    # "kitten" -> "sitting": 3 edits, as token ids.
    assert levenshtein([ord(c) for c in "kitten"], [ord(c) for c in "sitting"]) == 3
    assert levenshtein([1, 2, 3, 4], [2, 3, 4, 5]) == 2  # shift: one deletion + one insertion
    assert levenshtein([1, 2, 3, 4], [4, 3, 2, 1]) == 4


def test_levenshtein_matches_brute_force_on_random_sequences():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = rng.integers(0, 3, rng.integers(0, 9)).tolist()
        b = rng.integers(0, 3, rng.integers(0, 9)).tolist()
        assert levenshtein(a, b) == brute_levenshtein(a, b), (a, b)
        assert levenshtein(a, b) == levenshtein(b, a)


def test_levenshtein_rapidfuzz_parity_on_vocab_sized_ids():
    """Real token ids (up to a 100k vocab, as numpy arrays), empty and equal sequences, and lengths
    past rapidfuzz's 64-item bit-parallel block, against the independent recursion."""
    rng = np.random.default_rng(1)
    for n, m in [(0, 0), (0, 7), (7, 0), (70, 65), (130, 3)]:
        a = rng.integers(0, 100_352, n)
        b = np.concatenate([a[: m // 2], rng.integers(0, 100_352, m - m // 2)])
        assert levenshtein(a, b) == brute_levenshtein(a.tolist(), b.tolist()), (n, m)
    for _ in range(50):
        a = rng.integers(0, 100_352, rng.integers(0, 80))
        assert levenshtein(a, a.copy()) == 0
        b = a.copy()
        if b.size:
            b[rng.integers(0, b.size)] += 1  # one substitution
        assert levenshtein(a, b) == brute_levenshtein(a.tolist(), b.tolist())


def test_strict_and_loose_thresholds():
    target = list(range(48))
    assert recitation_match(target, target) == (0, 0.0, True, True)
    twelve = [-1] * 12 + target[12:]  # d = 12: 1 - 12/48 = 0.75 -> loose (boundary included)
    d, norm, strict, loose = recitation_match(twelve, target)
    assert (d, strict, loose) == (12, False, True) and norm == 0.25
    thirteen = [-1] * 13 + target[13:]
    assert recitation_match(thirteen, target)[2:] == (False, False)
    assert recitation_match([0, 1, 2, 9], [0, 1, 2, 3])[3] is True  # d/L = 1/4 on L = 4
    assert recitation_match([9, 9, 2, 3], [0, 1, 2, 3])[3] is False
    with pytest.raises(ValueError, match="empty"):
        recitation_match([1], [])


def test_ndcg_constructed_rankings():
    base = np.arange(10)[None]
    assert ndcg_from_topk(base, base)[0] == pytest.approx(1.0)
    assert ndcg_from_topk(base + 100, base)[0] == 0.0
    # k = 3, baseline [a, b, c], model [b, x, a]: rel = (2, 0, 3);
    # DCG = 2/1 + 0 + 3/log2(4) = 3.5; IDCG = 3 + 2/log2(3) + 1/2.
    got = ndcg_from_topk(np.array([[2, 99, 1]]), np.array([[1, 2, 3]]))[0]
    assert got == pytest.approx(3.5 / (3.5 + 2 / math.log2(3)))
    # k = 10 with the top two swapped, by the formula written out.
    swapped = np.array([[1, 0, *range(2, 10)]])
    dcg = 9 / 1 + 10 / math.log2(3) + sum((10 - r + 1) / math.log2(r + 1) for r in range(3, 11))
    idcg = sum((10 - r + 1) / math.log2(r + 1) for r in range(1, 11))
    assert ndcg_from_topk(swapped, base)[0] == pytest.approx(dcg / idcg)
    with pytest.raises(ValueError, match="shapes differ"):
        ndcg_from_topk(base[:, :5], base)


def test_length_bucket():
    assert [length_bucket(n) for n in (1, 16, 17, 24, 25, 33, 100, 1000)] == [
        16,
        16,
        24,
        24,
        32,
        48,
        128,
        1024,
    ]


@pytest.fixture(scope="module")
def tiny():
    return models.load_pretrained("tiny-olmo2", seed=3)


def _log_softmax64(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_perplexity_matches_numpy_from_logits(tiny):
    windows = np.random.default_rng(1).integers(0, 256, (5, 12))
    logp = _log_softmax64(tiny.logits(windows))
    nll = -np.take_along_axis(logp[:, :-1], windows[:, 1:, None], -1)[..., 0]  # [5, 11]
    got = perplexity(tiny, windows, batch_size=2)
    assert got["tokens"] == 55 and got["windows"] == 5
    assert got["perplexity"] == pytest.approx(np.exp(nll.mean()), rel=1e-5)
    # The reference release's variant: mean over batches (of 2 windows) of exp(batch mean NLL).
    ref = np.mean([np.exp(nll[i : i + 2].mean()) for i in range(0, 5, 2)])
    assert got["reference_batch_mean_perplexity"] == pytest.approx(ref, rel=1e-5)
    # Weights override: same numbers through `params=`.
    assert perplexity(tiny, windows, params=tiny.params)["nll"] == pytest.approx(got["nll"], 1e-7)


def test_continuation_scores_match_full_logits(tiny):
    rng = np.random.default_rng(2)
    pairs = [
        (
            rng.integers(0, 256, rng.integers(1, 30)).tolist(),
            rng.integers(0, 256, rng.integers(1, 7)).tolist(),
        )
        for _ in range(7)
    ]
    logp, greedy = score_continuations(tiny, pairs, batch_size=4, max_length=64)

    def full_logp(seq):  # right-padded to one width (causal: pads never reach real tokens)
        return _log_softmax64(tiny.logits(np.asarray([seq + [0] * (64 - len(seq))])))[0]

    for (ctx, cont), lp, gr in zip(pairs, logp, greedy):
        ref = full_logp(ctx + cont)
        rows = np.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
        assert lp == pytest.approx(ref[rows, cont].sum(), abs=1e-4)
        assert gr == bool(np.all(ref[rows].argmax(-1) == cont))
    # A greedy continuation is recognised as such; left truncation keeps the continuation whole.
    ctx = pairs[0][0]
    cont = [int(np.argmax(full_logp(ctx)[len(ctx) - 1]))]
    assert score_continuations(tiny, [(ctx, cont)])[1][0]
    long_ctx = rng.integers(0, 256, 100).tolist()
    cut = score_continuations(tiny, [(long_ctx, cont)], max_length=20)[0][0]
    ref = full_logp(long_ctx[-19:] + cont)[18, cont[0]]
    assert cut == pytest.approx(ref, abs=1e-4)


def _write(path, lines):
    path.write_text("".join(lines))
    return str(path)


def test_read_memorized_errors_name_the_line(tmp_path):
    ok = json.dumps({"prefix_ids": [1, 2, 3], "suffix_ids": [4, 5], "text": "x"}) + "\n"
    rows = read_memorized(_write(tmp_path / "ok.jsonl", [ok, "\n", ok]))
    assert [r["line"] for r in rows] == [1, 3] and rows[0]["text"] == "x"
    cases = {
        "missing": (json.dumps({"prefix_ids": [1, 2, 3]}), r"missing\.jsonl:2: missing field"),
        "floats": (
            json.dumps({"prefix_ids": [1.5, 2, 3], "suffix_ids": [4, 5]}),
            r"floats\.jsonl:2: `prefix_ids` must contain only integers",
        ),
        "vocab": (
            json.dumps({"prefix_ids": [1, 2, 3], "suffix_ids": [4, 500]}),
            r"vocab\.jsonl:2: `suffix_ids` has token id 500 outside",
        ),
        "badjson": ("{not json", r"badjson\.jsonl:2: not valid JSON"),
        "empty_list": (
            json.dumps({"prefix_ids": [1, 2, 3], "suffix_ids": []}),
            r"empty_list\.jsonl:2: `suffix_ids` must be a non-empty list",
        ),
    }
    for name, (line, pattern) in cases.items():
        path = _write(tmp_path / f"{name}.jsonl", [ok, line + "\n"])
        with pytest.raises(ValueError, match=pattern):
            read_memorized(path, vocab_size=256)
    # Lengths may vary per row (the quotes protocol) unless they are required.
    short = json.dumps({"prefix_ids": [1, 2], "suffix_ids": [4, 5]}) + "\n"
    mixed = read_memorized(_write(tmp_path / "mixed.jsonl", [ok, short]))
    assert [len(r["prefix_ids"]) for r in mixed] == [3, 2]
    with pytest.raises(
        ValueError, match=r"exp\.jsonl:1: .*prefix of 3 tokens.*`prefix_len` requires 4"
    ):
        read_memorized(_write(tmp_path / "exp.jsonl", [ok]), prefix_len=4, suffix_len=2)
    with pytest.raises(ValueError, match="no rows"):
        read_memorized(_write(tmp_path / "none.jsonl", ["\n"]))
    with pytest.raises(FileNotFoundError):
        read_memorized(str(tmp_path / "absent.jsonl"))


def test_text_windows_from_files(tmp_path, tiny):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    tok = Tokenizer(tok_models.WordLevel({"a": 1, "b": 2, "c": 3, "[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"text": "a b c a"}) + "\n" + json.dumps({"text": "c c b"}) + "\n")
    w = windows_from_sources([str(path)], tok, 3, eos_id=9)
    np.testing.assert_array_equal(w, [[1, 2, 3], [1, 9, 3], [3, 2, 9]])
    assert windows_from_sources([str(path)], tok, 3, eos_id=None, limit=1).tolist() == [[1, 2, 3]]
    bad = _write(
        tmp_path / "bad.jsonl", [json.dumps({"text": "a"}) + "\n", json.dumps({"t": 1}) + "\n"]
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing string field `text`"):
        windows_from_sources([bad], tok, 2, eos_id=None)
    arr = tmp_path / "w.npy"
    np.save(arr, np.zeros((4, 5), np.int64))
    assert windows_from_sources([str(arr)], None, 5, None).shape == (4, 5)
    with pytest.raises(ValueError, match="pass `length` 5"):
        windows_from_sources([str(arr)], None, 6, None)
    np.save(arr, np.full((2, 5), 300))
    with pytest.raises(ValueError, match="vocabulary"):
        windows_from_sources([str(arr)], None, 5, None, vocab_size=256)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        windows_from_sources([str(path)], None, 3, None)


def test_shared_prefix_path_matches_full_forward(tiny):
    """Few-shot requests share a prefix that is prefilled once; scores and greedy generations
    must equal those of independent full forwards."""
    from kfac_mem.evaluation.prefix_cache import MIN_SHARED, shared_prefix_len
    from kfac_mem.evaluation.task_eval import generate

    rng = np.random.default_rng(4)
    shots = rng.integers(0, 256, 40).tolist()
    ctxs = [shots + rng.integers(0, 256, n).tolist() for n in (1, 4, 5, 2, 3)]
    conts = [rng.integers(0, 256, n).tolist() for n in (1, 3, 2, 3, 1)]  # all fit 48
    assert shared_prefix_len(ctxs) == 40 and shared_prefix_len([ctxs[0], ctxs[0]]) == 40
    assert shared_prefix_len([shots[:MIN_SHARED], shots[:MIN_SHARED]]) == 0  # too short
    pairs = list(zip(ctxs, conts))
    shared = score_continuations(tiny, pairs, batch_size=4, max_length=64)
    plain = score_continuations(tiny, pairs, batch_size=4, max_length=64, share_prefix=False)
    np.testing.assert_allclose(shared[0], plain[0], atol=1e-4)
    np.testing.assert_array_equal(shared[1], plain[1])
    gen_shared = generate(tiny, ctxs, 4, batch_size=4)
    gen_plain = generate(tiny, ctxs, 4, batch_size=4, share_prefix=False)
    assert gen_shared == gen_plain and len({tuple(g) for g in gen_plain}) > 1
