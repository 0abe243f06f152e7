"""Mining finds exactly the windows a tiny model was trained to memorize."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from kfac_mem.evaluation import MiningConfig, mine, mine_windows, recitation
from kfac_mem.evaluation.mining import (
    candidate_windows,
    drop_near_duplicates,
    split_by_document,
)
from kfac_mem.evaluation.text import TokenDocument

P, S = 8, 8  # prefix / suffix lengths of the test windows
VOCAB = 256


@pytest.fixture(scope="module")
def trained():
    """tiny-olmo2 trained to recite 4 fixed windows; every batch also holds 4 fresh random
    windows, which it cannot memorize. Returns (model with trained params, memorized [4, 16])."""
    model = models.load_pretrained("tiny-olmo2", seed=0)
    rng = np.random.default_rng(0)
    memorized = rng.integers(0, VOCAB, (4, P + S)).astype(np.int32)
    opt = optax.adam(1e-2)

    def loss_fn(params, tokens):
        logits = model.apply(params, tokens)[0]
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    @jax.jit
    def step(params, state, key):
        noise = jax.random.randint(key, (4, P + S), 0, VOCAB, jnp.int32)
        tokens = jnp.concatenate([jnp.asarray(memorized), noise])
        grads = jax.grad(loss_fn)(params, tokens)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, state = model.params, opt.init(model.params)
    for i in range(150):
        params, state = step(params, state, jax.random.key(i))
    return model.with_params(params), memorized


def _corpus(memorized):
    """Candidates: the 4 memorized windows, an exact duplicate, a near miss (one suffix token
    changed) and 24 random windows, shuffled."""
    rng = np.random.default_rng(1)
    near_miss = memorized[1].copy()
    near_miss[P + 3] = (near_miss[P + 3] + 1) % VOCAB
    windows = np.concatenate(
        [memorized, memorized[:1], near_miss[None], rng.integers(0, VOCAB, (24, P + S))]
    ).astype(np.int32)
    order = rng.permutation(len(windows))
    return windows[order]


def _as_set(rows):
    return {tuple(r["prefix_ids"] + r["suffix_ids"]) for r in rows}


def test_mining_finds_exactly_the_trained_windows(trained, tmp_path):
    model, memorized = trained
    windows = _corpus(memorized)
    cfg = MiningConfig(
        prefix_len=P, suffix_len=S, stride=P + S, max_jaccard=0.5, ngram=3, val_fraction=0.5, seed=0
    )
    prov = [("corpus", i, 0) for i in range(len(windows))]
    out = mine_windows(model, windows, prov, cfg)
    assert out["stats"]["memorized"] == 5  # the 4 windows plus the exact duplicate
    assert out["stats"]["after_dedup"] == 4
    assert _as_set(out["train"] + out["validation"]) == {tuple(w) for w in memorized.tolist()}
    assert len(out["train"]) == len(out["validation"]) == 2
    assert _as_set(out["train"]).isdisjoint(_as_set(out["validation"]))
    assert {r["split"] for r in out["train"]} == {"train"}
    # The same split for the same seed; recitation of the mined set is perfect.
    again = mine_windows(model, windows, prov, cfg)
    assert _as_set(again["train"]) == _as_set(out["train"])
    rec = recitation(model, out["train"] + out["validation"], batch_size=4)
    assert (rec["strict"], rec["loose"], rec["mean_distance"]) == (1.0, 1.0, 0.0)
    # From a .npy corpus of documents (two windows per document, cut every 16 tokens).
    path = tmp_path / "corpus.npy"
    np.save(path, windows.reshape(-1, 2 * (P + S)))
    from_file = mine(model, [str(path)], cfg)
    assert _as_set(from_file["train"] + from_file["validation"]) == _as_set(
        out["train"] + out["validation"]
    )
    row = from_file["train"][0]
    flat = windows.reshape(-1)
    start = (2 * (P + S)) * row["doc_index"] + row["start"]
    assert flat[start : start + P + S].tolist() == row["prefix_ids"] + row["suffix_ids"]


def test_near_duplicate_removal_and_split():
    base = np.arange(40)
    shifted = np.arange(2, 42)  # shares 36 of its 38 trigrams with base
    other = np.arange(100, 140)
    assert drop_near_duplicates([base, shifted, other, base], max_jaccard=0.5, n=3) == [0, 2]
    assert drop_near_duplicates([base, shifted], max_jaccard=0.95, n=3) == [0, 1]
    singletons = [np.arange(i * 50, i * 50 + 20) for i in range(10)]
    train, val = split_by_document(singletons, list(range(10)), 0.3, seed=4)
    assert len(val) == 3 and sorted([*train, *val]) == list(range(10))
    assert split_by_document(singletons, list(range(10)), 0.3, seed=4)[1].tolist() == val.tolist()
    with pytest.raises(ValueError, match="max_jaccard"):
        MiningConfig(max_jaccard=1.5)


def _grams(w, n=16):
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_keeps_documents_and_16grams_on_one_side(seed):
    """Windows cut every 32 tokens inside documents (the miner's default geometry, where offsets
    0 and 96 share 16 tokens verbatim), plus one document quoting another: no document and no
    16-gram is in both train and validation, and the split is near the asked fraction."""
    rng = np.random.default_rng(seed)
    docs = [TokenDocument(rng.integers(0, 50_000, 400).astype(np.int32), "c", i) for i in range(12)]
    quoted = docs[3].ids[100:140]  # document 12 quotes 40 tokens of document 3
    docs.append(TokenDocument(np.concatenate([rng.integers(0, 50_000, 200), quoted]), "c", 12))
    cfg = MiningConfig(prefix_len=64, suffix_len=48)
    windows, where = candidate_windows(docs, cfg)
    documents = [w[:2] for w in where]
    train, val = split_by_document(list(windows), documents, 0.5, seed)
    assert sorted([*train, *val]) == list(range(len(windows)))
    assert {documents[i] for i in train}.isdisjoint({documents[i] for i in val})
    train_grams = set().union(*(_grams(windows[i].tolist()) for i in train))
    val_grams = set().union(*(_grams(windows[i].tolist()) for i in val))
    assert train_grams.isdisjoint(val_grams)
    assert ({documents[i] for i in val} >= {("c", 3), ("c", 12)}) or (
        {documents[i] for i in train} >= {("c", 3), ("c", 12)}
    )
    assert 0.25 < len(val) / len(windows) < 0.75
    # A per-window permutation (the old rule) would have split documents: the test can fail.
    perm = np.random.default_rng(seed).permutation(len(windows))
    old_val = set(perm[: len(windows) // 2].tolist())
    assert any(
        documents[i] == documents[j]
        for i in old_val
        for j in range(len(windows))
        if j not in old_val
    )
