"""Memorized sets with a prefix (and suffix) length per row, the paper's quotes protocol
(docs/design.md §3): every reader gives each row the result it gets alone (brute force), with a
bounded number of compiled shapes, on 1 and 8 devices; `mine` cuts such sets from documents."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import models
from kfac_mem.analysis import AnalyzeOptions, analyze, open_arrays
from kfac_mem.audit import AuditOptions, run_audit
from kfac_mem.baselines import BSNConfig, CompareOptions, CompareSets, StressOptions, compare
from kfac_mem.baselines.bsn import rows_to_windows
from kfac_mem.cli import main as cli_main
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.run import collect
from kfac_mem.data import Windows, array_fingerprint
from kfac_mem.decomposition.store import decompose_run
from kfac_mem.evaluation import MiningConfig, mine_windows, read_memorized, recitation
from kfac_mem.evaluation.mining import suffix_recited
from kfac_mem.evaluation.ragged import PAD, common_lengths, length_groups, pad_right
from kfac_mem.training import next_token_loss

VOCAB = 256
# (prefix, suffix) lengths of the mixed set: two prefix buckets (16, 24), three suffix lengths.
SHAPES = [(3, 4), (12, 8), (5, 2), (17, 8), (20, 4), (19, 2), (9, 8), (3, 2), (24, 4), (12, 2)]


@pytest.fixture(scope="module")
def pair(mesh1, mesh8):
    one = models.load_pretrained("tiny-olmo2", seed=5, mesh=mesh1[0], rules=mesh1[1])
    eight = models.load_pretrained("tiny-olmo2", seed=5, mesh=mesh8[0], rules=mesh8[1])
    return one, eight


def _rows(seed: int = 11) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "prefix_ids": rng.integers(0, VOCAB, p).tolist(),
            "suffix_ids": rng.integers(0, VOCAB, s).tolist(),
            "id": i,
        }
        for i, (p, s) in enumerate(SHAPES)
    ]


@pytest.fixture(scope="module")
def mixed(pair):
    """Mixed-length rows; every other row is made recitable (its suffix is the model's own
    greedy continuation, computed one row at a time)."""
    one, _ = pair
    rows = _rows()
    for r in rows[::2]:
        r["suffix_ids"] = _alone(one, r)["generated_ids"]
    # Exact comparisons of greedy decodes hold only without near-ties (margins >> float noise).
    windows = [r["prefix_ids"] + r["suffix_ids"] for r in rows]
    logits = np.asarray(one.logits(pad_right(windows, fill=0)))  # causal: pads come after
    for r, w, lg in zip(rows, windows, logits):
        top2 = np.sort(lg[len(r["prefix_ids"]) - 1 : len(w) - 1], axis=-1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0]).min() > 1e-4, "near-tie in the fixture; reseed it"
    return rows


def _alone(model, row: dict) -> dict:
    """Brute force: the recitation result of one row evaluated by itself."""
    return recitation(model, [row], batch_size=1)["rows"][0]


@pytest.fixture(scope="module")
def alone(pair, mixed):
    return [_alone(pair[0], r) for r in mixed]


def test_lengths_helpers():
    rows = _rows()
    assert common_lengths(rows) is None and common_lengths(rows[:1]) == SHAPES[0]
    assert [b for b, _ in length_groups([p for p, _ in SHAPES])] == [16, 24]
    padded = pad_right([[1, 2, 3], [4]])
    assert padded.tolist() == [[1, 2, 3], [4, PAD, PAD]]


def test_read_memorized_accepts_a_length_per_row(tmp_path):
    path = tmp_path / "quotes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    rows = read_memorized(str(path), vocab_size=VOCAB)
    assert [(len(r["prefix_ids"]), len(r["suffix_ids"])) for r in rows] == SHAPES
    with pytest.raises(ValueError, match=r"quotes\.jsonl:1: .*`suffix_len` requires 8"):
        read_memorized(str(path), suffix_len=8)


def test_recitation_of_a_mixed_set_equals_each_row_alone_on_1_and_8_devices(pair, mixed, alone):
    from models.generate import _generate

    one, eight = pair
    before = _generate._cache_size()
    together = {n: recitation(m, mixed, batch_size=4) for n, m in (("1", one), ("8", eight))}
    # One compiled decode per (prompt-length bucket, batch rows, longest suffix in the bucket),
    # not one per row: 2 buckets here, on each mesh.
    assert _generate._cache_size() - before <= 2 * 2
    for res in together.values():
        assert res["n"] == len(mixed)
        for a, b in zip(alone, res["rows"]):
            assert b["generated_ids"] == a["generated_ids"]
            assert (b["distance"], b["strict"], b["loose"]) == (
                a["distance"],
                a["strict"],
                a["loose"],
            )
            assert len(b["generated_ids"]) == len(mixed[b["index"]]["suffix_ids"])
    assert together["1"]["strict"] == pytest.approx(0.5)  # the five recitable rows, no others
    d = [a["normalized_distance"] for a in alone]
    assert together["8"]["mean_distance"] == pytest.approx(np.mean(d))
    # The teacher-forced check agrees with greedy decoding row by row (ragged path).
    np.testing.assert_array_equal(
        suffix_recited(eight, mixed, batch_size=4), [a["strict"] for a in alone]
    )


def test_mine_quotes_protocol(pair, tmp_path):
    """Documents of varying lengths; the memorized ones end in the model's greedy continuation
    of their first tokens. `prefix_len=None`: one window per document, suffix = last 4 tokens."""
    one, _ = pair
    rng = np.random.default_rng(3)
    recited = []
    for n in (6, 11, 19, 30):
        prefix = rng.integers(0, VOCAB, n).tolist()
        gen = recitation(one, [{"prefix_ids": prefix, "suffix_ids": [0] * 4}], batch_size=1)
        recited.append(prefix + gen["rows"][0]["generated_ids"])
    docs = recited + [rng.integers(0, VOCAB, n).tolist() for n in (7, 14, 25, 40, 9, 3)]
    cfg = MiningConfig(prefix_len=None, suffix_len=4, val_fraction=0.5, max_jaccard=0.9, ngram=3)
    windows = [np.asarray(d, np.int32) for d in docs if len(d) > 4]
    prov = [("quotes", i, 0) for i in range(len(windows))]
    out = mine_windows(one, windows, prov, cfg)
    found = out["train"] + out["validation"]
    assert {tuple(r["prefix_ids"] + r["suffix_ids"]) for r in found} == {tuple(d) for d in recited}
    assert all(len(r["suffix_ids"]) == 4 for r in found)
    assert sorted(len(r["prefix_ids"]) for r in found) == [6, 11, 19, 30]
    assert out["stats"]["protocol"] == "quotes" and out["stats"]["prefix_lengths"]["max"] == 30
    # `max_prefix_len` keeps the prefix tokens nearest the suffix; via the CLI on a .npy corpus
    # (one document per row).
    np.save(tmp_path / "docs.npy", rng.integers(0, VOCAB, (2, 24)))
    argv = ["mine", "--model", "tiny-olmo2", "--seed", "0", "--corpus", str(tmp_path / "docs.npy"),
            "--prefix-len", "rest", "--suffix-len", "4", "--max-prefix-len", "12",
            "--out", str(tmp_path / "mined"), "--mesh", "data"]  # fmt: skip
    with pytest.raises(ValueError, match="max_prefix_len"):
        MiningConfig(prefix_len=8, max_prefix_len=4)
    assert cli_main(argv) == 0
    summary = json.loads((tmp_path / "mined" / "summary.json").read_text())
    assert summary["protocol"] == "quotes" and summary["candidates"] == 2
    assert summary["max_prefix_len"] == 12 and summary["prefix_len"] is None


def test_masked_loss_of_padded_windows_is_the_token_weighted_loss_alone(pair, mixed):
    one, _ = pair
    rows = mixed[:5]  # windows of 7, 20, 7, 25 and 24 tokens
    windows = rows_to_windows(rows)  # PAD-right-padded
    assert windows.shape == (5, 25) and (windows == PAD).sum() == 18 + 5 + 18 + 1
    loss = jax.jit(next_token_loss, static_argnums=0)
    got = float(loss(one, one.params, windows))
    # Brute force: every window alone (its mean loss times its labelled positions).
    sums = []
    for r in rows:
        w = r["prefix_ids"] + r["suffix_ids"]
        alone_sum = float(loss(one, one.params, np.asarray([w]))) * (len(w) - 1)
        sums.append(alone_sum)
    positions = sum(p + s - 1 for p, s in SHAPES[:5])
    assert got == pytest.approx(sum(sums) / positions, rel=1e-5)


@pytest.fixture(scope="module")
def eigen(pair, tmp_path_factory):
    one, _ = pair
    root = tmp_path_factory.mktemp("ragged_eigen")
    corpus = np.random.default_rng(0).integers(0, VOCAB, (16, 24)).astype(np.int32)
    sites = [
        s for s in one.linear_sites() if s.layer == 1 and s.id.endswith(("gate_proj", "up_proj"))
    ]
    run = collect(one, Windows(corpus, ("random",), array_fingerprint(corpus)), sites,
                  str(root / "factors"), CollectConfig(batch_size=8), progress=False)  # fmt: skip
    return decompose_run(run, str(root / "eigen"))


def test_analyzer_per_example_numbers_equal_those_of_uniform_sets(pair, mixed, eigen, tmp_path):
    """One analyzer run over the mixed set and over the same rows split by length: each row's
    per-example arrays agree (gold labels, so no sampling differs between batches)."""
    one, _ = pair
    rows = [mixed[i] for i in (0, 2, 6, 9)]  # windows of 7, 7, 17 and 14 tokens
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(len(r["prefix_ids"]) + len(r["suffix_ids"]), []).append(i)
    sets = {"mixed": rows, **{f"len{w}": [rows[i] for i in idx] for w, idx in groups.items()}}
    options = AnalyzeOptions(mode="empirical", batch_size=4, top_k=4, ablation="none",
                             svd=False, ekfac=False, figures=False, progress=False)  # fmt: skip
    report = analyze(one, eigen, sets, out_dir=str(tmp_path / "a"), options=options, log=None)
    assert report["sets"]["mixed"]["window_length_range"] == [7, 17]
    store = open_arrays(str(tmp_path / "a"))
    for key in [k for k in store if k.startswith("mixed/") and "top_index" not in k]:
        mixed_values = store.read(key)
        for w, idx in groups.items():
            alone = store.read(key.replace("mixed/", f"len{w}/", 1))
            np.testing.assert_allclose(
                mixed_values[idx], alone, rtol=2e-4, atol=1e-6 * np.abs(alone).max(), err_msg=key
            )
    n_pos = store.read("mixed/n_positions")
    np.testing.assert_array_equal(n_pos, [6, 6, 16, 13])


def test_compare_and_stress_accept_mixed_sets(pair, mixed, alone):
    """BSN forgets the mixed set (PAD-padded windows), every set is scored per row, and the
    positional stress test scores each row against its own suffix."""
    one, _ = pair
    text = np.random.default_rng(1).integers(0, VOCAB, (8, 24)).astype(np.int32)
    sets = CompareSets(mixed, mixed[:5], mixed[5:], text, text)
    options = CompareOptions(
        methods=("bsn",),
        target_ratio=1.05,
        tolerance=0.5,
        refine=0,
        bsn=BSNConfig(epochs=1, batch_size=4, projections=("up",)),
        bsn_ratios=(0.01,),
        bsn_loss_weights=(0.5,),
        stress=StressOptions(shifts=(1, 4), relearn_steps=0, batch_size=4),
        batch_size=4,
        ndcg_windows=4,
    )
    res = compare(one, None, sets, options, log=None)
    base = res["methods"]["baseline"]
    assert base["recitation"]["train"]["n"] == len(mixed)
    assert base["recitation"]["train"]["strict"] == pytest.approx(0.5)
    pos = base["stress"]["positional"]["ood"]
    assert pos["shifts"] == [1] and pos["suffix_len"] == 8  # a 4-token drop would empty a prefix
    # Unperturbed exact-match length = each row's own suffix length when recited, else the
    # length of the leading run its generation alone gets right.
    want = [
        len(r["suffix_ids"]) if a["strict"] else next(
            j for j, (g, t) in enumerate(zip(a["generated_ids"], r["suffix_ids"])) if g != t
        )
        for r, a in zip(mixed[5:], alone[5:])
    ]  # fmt: skip
    assert pos["unperturbed"]["mean"] == pytest.approx(np.mean(want))
    assert res["paired"]["bsn_vs_baseline"]["train"]["strict"]["n"] == len(mixed)


def test_audit_of_a_mixed_set_equals_its_uniform_parts(pair, mixed):
    """Greedy and beam attacks and the per-row log-probabilities of a mixed set equal those of
    the same rows audited in uniform-length sets; the MIA negatives follow the length mix."""
    one, _ = pair
    clean = np.random.default_rng(2).integers(0, VOCAB, (12, 32)).astype(np.int32)
    options = AuditOptions(attacks=("beam", "prefix", "membership"), beam_width=2,
                           prefix_lengths=(4,), shifts=(1,), shift_modes=("drop",), dropout=(),
                           batch_size=2, beam_batch=2, progress=False)  # fmt: skip
    by_suffix: dict[int, list[int]] = {}
    for i, (_, s) in enumerate(SHAPES):
        by_suffix.setdefault(s, []).append(i)
    sets = {"mixed": mixed, **{f"s{s}": [mixed[i] for i in idx] for s, idx in by_suffix.items()}}
    res = run_audit(one, one, sets, clean, None, options, log=None)["sets"]
    mixed_res = res["mixed"]
    assert (mixed_res["prefix_len"], mixed_res["suffix_len"]) == ("3-24", "2-8")
    for s, idx in by_suffix.items():
        part = res[f"s{s}"]
        for j, i in enumerate(idx):
            for key in ("logp_model", "rank_model", "exact", "longest_match"):
                assert mixed_res["beam"]["examples"][i][key] == pytest.approx(
                    part["beam"]["examples"][j][key], rel=1e-5
                ), key
            full_mixed = "full" in mixed_res["prefix"]["examples"][i]["exact_variants"]
            assert full_mixed == ("full" in part["prefix"]["examples"][j]["exact_variants"])
            assert full_mixed == bool(i % 2 == 0)  # the recitable rows
    mia = mixed_res["membership"]
    assert mia["width"] == "5-28" and mia["n_clean"] == len(clean)
    assert jax.device_count() == 8
