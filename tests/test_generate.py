"""Batched greedy generation with a KV cache equals plain step-by-step greedy decoding.

The reference decodes without any cache: at every step it re-runs `model.logits` on the whole
left-padded sequence (prompt + tokens so far, with its attention mask) and takes the argmax at the
last real token. To compile it once, the sequence lives in a fixed buffer whose not-yet-generated
slots sit to the right of the current token, where causal attention cannot see them (causality
itself is checked against transformers in test_models_parity.py).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import models
from models.generate import left_pad
from models.language_model import abstract_params

NEW = 8
PROMPT_LENGTHS = (5, 17, 1, 9, 12)  # batch bucket: 32 slots; alone, all but one fit in 16
BATCH = 8


def random_model(config: models.DecoderConfig, seed: int) -> models.LanguageModel:
    """Weights at O(1) scale, so greedy continuations vary and argmax ties do not occur."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return 1.0 + 0.3 * rng.standard_normal(leaf.shape, np.float32)
        if "embedding" in name:  # small, or a tied head just repeats the last token
            return 0.1 * rng.standard_normal(leaf.shape, np.float32)
        if "lm_head" in name:
            return rng.standard_normal(leaf.shape, np.float32)
        return rng.standard_normal(leaf.shape, np.float32) / np.sqrt(leaf.shape[0])

    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.numpy.asarray(draw(p, x)), abstract_params(config)[0]
    )
    return models.LanguageModel(config, params, source=f"test:{seed}")


def reference_greedy(model: models.LanguageModel, prompts, new: int) -> tuple[np.ndarray, float]:
    """(continuations [N, new], smallest top-1 minus top-2 logit gap seen while decoding)."""
    tokens, mask = left_pad(prompts, bucket=16, pad_id=model.config.pad_token_id or 0)
    width = tokens.shape[1]
    seq = np.concatenate([tokens, np.zeros((len(prompts), new), np.int32)], axis=1)
    full_mask = np.concatenate([mask, np.ones((len(prompts), new), np.int32)], axis=1)
    gap = np.inf
    for i in range(new):
        last = np.asarray(model.logits(seq, attention_mask=full_mask))[:, width + i - 1]
        top2 = np.sort(last, axis=-1)[:, -2:]
        gap = min(gap, float((top2[:, 1] - top2[:, 0]).min()))
        seq[:, width + i] = last.argmax(-1)
    return seq[:, width:], gap


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [rng.integers(3, 256, size=n).tolist() for n in PROMPT_LENGTHS]


@pytest.fixture(scope="module", params=["tiny-olmo2", "tiny-llama"])
def case(request, prompts):
    """(model, reference continuations)."""
    model = random_model(models.get_config(request.param), seed=11)
    want, gap = reference_greedy(model, prompts, NEW)
    assert gap > 1e-3, f"near-tie in the reference decoding (gap {gap:.2g}); pick another seed"
    assert len(np.unique(want)) > NEW, f"degenerate model: continuations {want}"
    assert len({tuple(r) for r in want}) == len(prompts), "rows should differ"
    return model, want


def test_cache_equals_no_cache(case, prompts):
    model, want = case
    got = models.greedy_generate(model, prompts, NEW, batch_size=BATCH)
    assert got.shape == (len(prompts), NEW) and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_rows_do_not_interact(case, prompts):
    """Alone (different padding, batch of one) a prompt gets the continuation it gets in a batch."""
    model, want = case
    for prompt, row in zip(prompts, want):
        np.testing.assert_array_equal(
            models.greedy_generate(model, [prompt], NEW, batch_size=2)[0], row
        )


def test_chunked_batches(case, prompts):
    """Prompts split over several padded batches (2 rows each) decode the same."""
    model, want = case
    np.testing.assert_array_equal(models.greedy_generate(model, prompts, NEW, batch_size=2), want)


@pytest.mark.multidevice
def test_generate_on_mesh(case, prompts, mesh8):
    """Batch rows and parameters sharded over 8 devices: same continuations, for both families."""
    model, want = case
    mesh, rules = mesh8
    shardings = models.language_model.param_shardings(model.config, mesh, rules)
    on_mesh = models.LanguageModel(
        model.config, jax.device_put(model.params, shardings), mesh=mesh, rules=rules
    )
    np.testing.assert_array_equal(
        models.greedy_generate(on_mesh, prompts, NEW, batch_size=BATCH), want
    )


def test_rejects_bad_arguments(case):
    model, _ = case
    with pytest.raises(ValueError, match="max_new_tokens"):
        models.greedy_generate(model, [[5, 6]], 0)
    with pytest.raises(ValueError, match="at least one token"):
        models.greedy_generate(model, [[5, 6], []], 2)
