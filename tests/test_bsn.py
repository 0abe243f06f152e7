"""BalancedSubnet: exact per-matrix sparsity, straight-through gradients, forgetting on a model
trained to memorize, sharded training, and the `kfac-mem baseline bsn` command."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_memorizer import ToyConfig, cached_toy, write_toy

from kfac_mem.baselines.bsn import (
    BSNConfig,
    _step,
    apply_masks,
    init_scores,
    init_state,
    masked_sites,
    prune_count,
    rows_to_windows,
    straight_through_mask,
    topk_mask,
    train_bsn,
)
from kfac_mem.cli import main as cli_main
from kfac_mem.evaluation import perplexity, recitation
from kfac_mem.evaluation.batching import place_batch
from kfac_mem.training import next_token_loss
from models import LanguageModel, load_pretrained
from models.language_model import param_shardings
from models.sites import get_path

# A setting that makes the test-size toy forget its train windows within 40 steps.
FORGET = BSNConfig(
    ratio=0.1,
    loss_weight=0.1,
    learning_rate=1.0,
    epochs=40,
    batch_size=8,
    projections=("gate", "up", "down"),
)


@pytest.fixture(scope="module")
def toy():
    return cached_toy(ToyConfig())


def _placed(toy, mesh, rules) -> LanguageModel:
    """The toy model's trained weights placed on a mesh."""
    m = toy.model
    params = jax.device_put(m.params, param_shardings(m.config, mesh, rules))
    return LanguageModel(m.config, params, None, mesh, rules, source=m.source)


@pytest.mark.parametrize("ratio", [0.001, 0.0015, 0.1, 0.5, 0.97])
def test_mask_has_exactly_the_requested_sparsity_even_with_ties(ratio):
    rng = np.random.default_rng(0)
    shape = (64, 96)
    n = prune_count(shape[0] * shape[1], ratio)
    assert n == int(ratio * shape[0] * shape[1])
    for scores in (
        rng.standard_normal(shape),
        rng.integers(-3, 4, shape).astype(np.float32),  # massive ties, zeros and ±ties in |s|
    ):
        mask = np.asarray(topk_mask(jnp.asarray(scores, jnp.float32), n))
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert int((mask == 0).sum()) == n
        a = np.abs(scores)
        if 0 < n < mask.size:
            assert a[mask == 0].max() <= a[mask == 1].min()  # the smallest |score| are pruned
        st = np.asarray(straight_through_mask(jnp.asarray(scores, jnp.float32), n))
        np.testing.assert_array_equal(st, mask)  # the straight-through value is the hard mask


def test_prune_count_rejects_a_ratio_that_prunes_nothing():
    with pytest.raises(ValueError, match="prunes none"):
        prune_count(100, 0.005, "model.layers.0.mlp.up_proj")
    with pytest.raises(ValueError, match="ratio"):
        BSNConfig(ratio=1.0)
    with pytest.raises(ValueError, match="projections"):
        BSNConfig(projections=("q",))


def test_gradients_reach_scores_straight_through(toy):
    """In the training step, ∂L/∂S = ∂L/∂(W ⊙ m) ⊙ W ⊙ sign(S) for every masked matrix, non-zero.

    The step runs plain SGD (momentum 0, no decay) with a large rate, so S − S' = lr · ∂L/∂S.
    """
    model = toy.model
    sites = tuple(masked_sites(model, None, FORGET.projections))
    scores = init_scores(model, sites, 3)
    counts = [jnp.int32(prune_count(s.d_in * s.d_out, FORGET.ratio)) for s in sites]
    forget = place_batch(model, rows_to_windows(toy.train))  # placed as `train_bsn` places them
    retain = place_batch(model, toy.retain[:8])
    w, lr = jnp.float32(0.3), 1e4
    sgd = BSNConfig(learning_rate=lr, momentum=0.0, weight_decay=0.0)
    state = init_state(model, sites, scores, sgd)
    new, _, value, _, _ = _step(
        model, sites, model.params, scores, state, counts, w, forget, retain
    )

    def loss_at(params):
        ce_f = next_token_loss(model, params, forget)
        return -(1 - w) * ce_f + w * next_token_loss(model, params, retain)

    hard = apply_masks(model.params, sites, scores, counts, straight_through=False)
    hard_value, g_eff = jax.jit(jax.value_and_grad(loss_at))(hard)
    np.testing.assert_allclose(value, hard_value, rtol=1e-6)  # the forward is the hard mask
    for site in sites:
        kernel = get_path(model.params, site.kernel_path)
        expected = np.asarray(
            get_path(g_eff, site.kernel_path) * kernel * jnp.sign(scores[site.id])
        )
        got = np.asarray(scores[site.id] - new[site.id]) / lr
        assert np.abs(got).max() > 0, site.id
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6 * np.abs(expected).max())


def test_bsn_lowers_forget_set_recitation(toy):
    model = toy.model
    before = recitation(model, toy.train, include_rows=False)
    assert before["strict"] == 1.0
    res = train_bsn(model, rows_to_windows(toy.train), toy.retain, FORGET, log=None)
    after = recitation(model, toy.train, res.params, include_rows=False)
    assert after["strict"] <= 0.25 and after["mean_distance"] >= 0.5, after
    # Exactly floor(ratio · size) weights of each masked matrix were zeroed; nothing else moved.
    masked = {s.id for s in res.sites}
    assert len(masked) == 3 * model.config.num_layers
    for site in model.linear_sites():
        old = np.asarray(get_path(model.params, site.kernel_path))
        new = np.asarray(get_path(res.params, site.kernel_path))
        if site.id in masked:
            newly_zero = int(((new == 0) & (old != 0)).sum())
            assert newly_zero == int(FORGET.ratio * old.size), site.id
            np.testing.assert_array_equal(new[new != 0], old[new != 0])
        else:
            np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(
        res.params["model"]["embed_tokens"]["embedding"],
        model.params["model"]["embed_tokens"]["embedding"],
    )
    # The retain loss kept clean text usable.
    ppl = perplexity(model, toy.text)["perplexity"]
    assert perplexity(model, toy.text, res.params)["perplexity"] < 1.5 * ppl
    assert res.steps == FORGET.epochs * -(-len(toy.train) // FORGET.batch_size)
    assert [h["step"] for h in res.history][-1] == res.steps


@pytest.mark.multidevice
def test_sharded_bsn_matches_one_device(toy, mesh8):
    """FSDP over 8 devices gives the single-device run (same setting: its compile is reused)."""
    config = dataclasses.replace(FORGET, epochs=1, max_steps=3, log_every=1)
    forget = rows_to_windows(toy.train)
    model8 = _placed(toy, *mesh8)
    r8 = train_bsn(model8, forget, toy.retain, config, log=None)
    r1 = train_bsn(toy.model, forget, toy.retain, config, log=None)
    for site in r8.sites:
        s8, s1 = r8.scores[site.id], r1.scores[site.id]
        kernel = get_path(model8.params, site.kernel_path)
        assert s8.sharding.spec == kernel.sharding.spec, site.id  # sharded like its weight
        assert len(s8.sharding.device_set) == 8
        np.testing.assert_allclose(np.asarray(s8), np.asarray(s1), rtol=1e-4, atol=1e-7)
        z8 = np.asarray(get_path(r8.params, site.kernel_path)) == 0
        z1 = np.asarray(get_path(r1.params, site.kernel_path)) == 0
        assert z8.sum() == z1.sum(), site.id
        # The pruned sets are the lowest scores; they may differ only where a score ties the
        # pruning threshold to the tolerance the two runs' scores agree to.
        scores = np.asarray(s1).ravel()
        threshold = np.sort(scores)[int(z1.sum()) - 1] if z1.any() else -np.inf
        differ = (z8 != z1).ravel()
        assert np.allclose(scores[differ], threshold, rtol=1e-4, atol=1e-7), site.id
    np.testing.assert_allclose(
        [h["loss"] for h in r8.history], [h["loss"] for h in r1.history], rtol=1e-4
    )


def test_baseline_bsn_cli_writes_a_loadable_masked_model(toy, tmp_path):
    """The command masks every layer by default and writes an Orbax model (and an HF export) that
    loads back with exactly the reported pruning. Same mesh, projections and shapes as the sharded
    test, so its compiled step is reused."""
    paths = write_toy(toy, str(tmp_path / "toy"))
    out, hf = tmp_path / "bsn", tmp_path / "bsn-hf"
    argv = [
        "baseline", "bsn", "--model", paths["model"], "--forget", paths["train"],
        "--retain", paths["retain"], "--ratio", "0.02", "--epochs", "1", "--batch-size", "8",
        "--projections", "gate,up,down", "--out", str(out), "--export-hf", str(hf),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert [m["id"] for m in report["matrices"]] == [
        f"model.layers.{i}.mlp.{p}_proj" for i in range(2) for p in ("gate", "up", "down")
    ]
    assert os.path.isfile(out / "config.yaml") and os.path.isfile(hf / "config.json")
    loaded = load_pretrained(str(out))
    assert loaded.fingerprint() == report["model"]["masked_fingerprint"]
    masked = {m["id"]: m for m in report["matrices"]}
    for site in loaded.linear_sites():
        new = np.asarray(get_path(loaded.params, site.kernel_path))
        old = np.asarray(get_path(toy.model.params, site.kernel_path))
        if site.id in masked:
            assert int(((new == 0) & (old != 0)).sum()) == masked[site.id]["pruned"]
            assert masked[site.id]["pruned"] == int(0.02 * new.size)
        else:
            np.testing.assert_array_equal(new, old)
    # A second run into the same directory needs --overwrite; a malformed forget file is named.
    assert cli_main(argv) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prefix_ids": [1, 2]}\n')
    bad_argv = ["baseline", "bsn", "--model", paths["model"], "--forget", str(bad)]
    assert cli_main([*bad_argv, "--retain", paths["retain"], "--out", str(tmp_path / "x")]) == 2
