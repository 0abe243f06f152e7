"""Sampling and beam search (models.generate) against greedy decoding and teacher forcing.

The model is the O(1)-weight random decoder of test_generate.py, whose argmax gaps are far above
float noise, so "temperature → 0", "top-k 1" and "beam width 1" must reproduce greedy exactly.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_generate import random_model

import models
from kfac_mem.evaluation.scoring import token_nll
from models.generate import filter_logits

NEW = 6
PROMPTS = [[5, 6, 7, 8, 9], [17, 3, 3, 40], [1], [9, 8, 7, 6, 5, 4, 3, 2, 1]]
BATCH = 8


@pytest.fixture(scope="module")
def model():
    return random_model(models.get_config("tiny-olmo2"), seed=11)


@pytest.fixture(scope="module")
def greedy(model):
    return models.greedy_generate(model, PROMPTS, NEW, batch_size=BATCH)


def _sample(model, seeds, **kw):
    kw.setdefault("batch_size", BATCH)
    return models.sample_generate(model, PROMPTS, NEW, seeds, **kw)


def test_cold_sampling_equals_greedy_and_sampling_is_seeded(model, greedy):
    np.testing.assert_array_equal(_sample(model, [0, 1, 2, 3], temperature=1e-4), greedy)
    a = _sample(model, [0, 1, 2, 3])
    np.testing.assert_array_equal(a, _sample(model, [0, 1, 2, 3]))  # same seeds, same samples
    c = _sample(model, [10, 11, 12, 13])
    assert (a != c).any(axis=1).sum() >= 3  # different seeds: different samples
    assert (a != greedy).any()  # T = 1 is not greedy on an O(1) random model


def test_beam_width_1_is_greedy(model, greedy):
    beams, _ = models.beam_search(model, PROMPTS, NEW, 1, batch_size=BATCH)
    np.testing.assert_array_equal(beams[:, 0], greedy)


@pytest.mark.slow
def test_top_k_1_and_batching_do_not_change_samples(model, greedy):
    np.testing.assert_array_equal(_sample(model, [4, 5, 6, 7], temperature=1.0, top_k=1), greedy)
    np.testing.assert_array_equal(_sample(model, [4, 5, 6, 7], temperature=0.0), greedy)
    a = _sample(model, [0, 1, 2, 3])
    np.testing.assert_array_equal(a, _sample(model, [0, 1, 2, 3], batch_size=2))


def test_filter_logits_matches_brute_force():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 12)).astype(np.float32)
    out = np.asarray(filter_logits(jax.numpy.asarray(logits), top_k=4, top_p=0.6))
    for row, got in zip(logits, out):
        order = np.argsort(-row)[:4]  # top-k first, then top-p on the renormalized top-k
        p = np.exp(row[order] - row.max())
        p /= p.sum()
        before = np.cumsum(p) - p
        assert set(np.flatnonzero(got > -1e30)) == set(order[before < 0.6])


@pytest.mark.slow
def test_beams_score_their_tokens(model, greedy):
    beams, scores = models.beam_search(model, PROMPTS, NEW, 4, batch_size=2)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # Each beam's score is the teacher-forced log-probability of its own tokens (cache reorder).
    for i, prompt in enumerate(PROMPTS):
        windows = np.asarray([prompt + b.tolist() for b in beams[i]], np.int32)
        nll = np.asarray(token_nll(model, model.params, windows))
        np.testing.assert_allclose(-nll[:, len(prompt) - 1 :].sum(1), scores[i], atol=2e-4)
        assert len({tuple(b) for b in beams[i]}) == 4  # distinct hypotheses
    # The best beam is at least as likely as the greedy continuation.
    windows = np.asarray([p + g.tolist() for p, g in zip(PROMPTS[:1], greedy[:1])], np.int32)
    greedy_logp = -np.asarray(token_nll(model, model.params, windows))[0, 4:].sum()
    assert scores[0, 0] >= greedy_logp - 1e-4


@pytest.mark.slow
@pytest.mark.multidevice
def test_sampling_and_beams_on_8_devices(model, mesh8):
    mesh, rules = mesh8
    shardings = models.language_model.param_shardings(model.config, mesh, rules)
    on_mesh = models.LanguageModel(
        model.config, jax.device_put(model.params, shardings), mesh=mesh, rules=rules
    )
    np.testing.assert_array_equal(_sample(on_mesh, [0, 1, 2, 3]), _sample(model, [0, 1, 2, 3]))
    b8, s8 = models.beam_search(on_mesh, PROMPTS, NEW, 4, batch_size=BATCH)
    b1, s1 = models.beam_search(model, PROMPTS, NEW, 4, batch_size=BATCH)
    np.testing.assert_array_equal(b8, b1)
    np.testing.assert_allclose(s8, s1, atol=1e-4)


def test_rejects_bad_arguments(model):
    with pytest.raises(ValueError, match="row_seeds"):
        models.sample_generate(model, PROMPTS, NEW, [0])
    with pytest.raises(ValueError, match="top_p"):
        models.sample_generate(model, PROMPTS, NEW, [0, 1, 2, 3], top_p=0.0)
    with pytest.raises(ValueError, match="width"):
        models.beam_search(model, PROMPTS, NEW, 0)
    with pytest.raises(ValueError, match="temperature"):
        models.sample_generate(model, PROMPTS, NEW, [0, 1, 2, 3], temperature=-1.0)
