"""Logits parity of the Flax decoders with transformers' `Olmo2ForCausalLM` / `LlamaForCausalLM`.

Each tiny config is built in torch, its weights are re-drawn at a scale where every parameter
matters (norm weights far from 1, logits of order 10), saved with `save_pretrained`, loaded with
`models.load_pretrained` on one device and on the 8-device FSDP mesh, and compared in float32:
max |Δlogit| <= 1e-4 on full rows and on the real positions of left-padded rows.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402

import models  # noqa: E402

pytestmark = pytest.mark.hf

TOL = 1e-4
BATCH, SEQ, VOCAB = 8, 16, 256
# Left padding per row (0 = a full row); several rows share a prompt length with others.
PADS = (0, 3, 7, 15, 0, 1, 10, 5)

# name -> (HF config class name, kwargs). Dimensions are small but all distinct where it matters:
# hidden 64 is divisible by 8, so FSDP shards the `embed` dimension of every kernel.
CONFIGS: dict[str, tuple[str, dict]] = {
    "olmo2_gqa": ("Olmo2Config", dict(num_attention_heads=4, num_key_value_heads=2)),
    "olmo2_mha": (
        "Olmo2Config",
        dict(num_attention_heads=4, num_key_value_heads=4, rope_theta=500000.0),
    ),
    "llama_gqa_tied": (
        "LlamaConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=100000.0,
        ),
    ),
    "llama_mha_untied": (
        "LlamaConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=False,
            rope_theta=10000.0,
        ),
    ),
    # head_dim 32 != hidden / heads: q/o projections are not square.
    "llama_gqa_untied_wide_heads": (
        "LlamaConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            tie_word_embeddings=False,
            rope_theta=31337.0,
        ),
    ),
}
# One checkpoint is written in several shards (model.safetensors.index.json) to cover that reader.
SHARDED = {"olmo2_gqa"}


def hf_model(kind: str, **kwargs):
    """A tiny HF causal LM in float32 whose weights are all re-drawn (no trivial init values)."""
    cls = getattr(transformers, kind)
    rope_theta = kwargs.pop("rope_theta", 10000.0)
    config = cls(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        **kwargs,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(zlib.crc32((kind + repr(sorted(kwargs.items()))).encode()))
    model = getattr(transformers, kind.replace("Config", "ForCausalLM"))(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm weights (incl. OLMo-2 q_norm/k_norm)
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn_like(p))
            else:  # [d_out, d_in] linear weights, O(1) outputs
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return model


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HF logits with the positions `generate` would use (count only real tokens)."""
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(positions).long(),
        )
    return out.logits.float().numpy()


def left_padded(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row i keeps its last SEQ - PADS[i] tokens, shifted right behind PADS[i] pad tokens."""
    padded = np.zeros_like(tokens)
    mask = np.zeros_like(tokens)
    for i, pad in enumerate(PADS):
        padded[i, pad:] = tokens[i, : SEQ - pad]
        mask[i, pad:] = 1
    return padded, mask


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(3, VOCAB, size=(BATCH, SEQ), dtype=np.int32)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, tmp_path_factory, tokens):
    """(name, checkpoint dir, HF logits full, HF logits padded, padded tokens, mask)."""
    name = request.param
    kind, kwargs = CONFIGS[name]
    model = hf_model(kind, **dict(kwargs))
    path = tmp_path_factory.mktemp(name)
    shard = "40KB" if name in SHARDED else "50GB"
    model.save_pretrained(path, safe_serialization=True, max_shard_size=shard)
    if name in SHARDED:
        assert (path / "model.safetensors.index.json").is_file()
        assert len(list(path.glob("*.safetensors"))) > 1
    full = hf_logits(model, tokens, np.ones_like(tokens))
    padded, mask = left_padded(tokens)
    return name, str(path), full, hf_logits(model, padded, mask), padded, mask


def _sharded_leaves(params) -> list[str]:
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        shard_shape = leaf.sharding.shard_shape(leaf.shape)
        if len(leaf.sharding.device_set) > 1 and shard_shape != leaf.shape:
            out.append(jax.tree_util.keystr(path))
    return out


@pytest.mark.parametrize(
    "placement", ["one_device", pytest.param("mesh8", marks=pytest.mark.multidevice)]
)
def test_logits_match_transformers(case, placement, tokens, request):
    name, path, want_full, want_padded, padded, mask = case
    if placement == "mesh8":
        mesh, rules = request.getfixturevalue("mesh8")
        model = models.load_pretrained(path, mesh=mesh, rules=rules)
        sharded = _sharded_leaves(model.params)
        # Every kernel and the embedding have a 64-wide `embed` dimension split 8 ways.
        assert len(sharded) >= 7 * 2, f"too few parameters sharded on the mesh: {sharded}"
    else:
        model = models.load_pretrained(path)
        assert all(len(x.sharding.device_set) == 1 for x in jax.tree_util.tree_leaves(model.params))

    kind = CONFIGS[name][0]
    assert model.config.family == ("olmo2" if kind == "Olmo2Config" else "llama")
    got_full = np.asarray(model.logits(tokens))
    got_padded = np.asarray(model.logits(padded, attention_mask=mask))

    assert want_full.std() > 2.0, "logits too small for a meaningful tolerance"
    err_full = float(np.abs(got_full - want_full).max())
    real = mask.astype(bool)
    err_padded = float(np.abs(got_padded[real] - want_padded[real]).max())
    print(
        f"\n{name} [{placement}] max|Δlogit| full={err_full:.2e} left-padded={err_padded:.2e} "
        f"(logit std {want_full.std():.1f})"
    )
    assert err_full <= TOL, f"{name}: max |Δlogit| {err_full:.3g} vs transformers"
    assert err_padded <= TOL, f"{name}: max |Δlogit| {err_padded:.3g} on left-padded rows"

    # Left padding is invisible: by causality a padded row's real positions equal the logits of
    # the same prefix in the unpadded batch.
    for i, pad in enumerate(PADS):
        np.testing.assert_allclose(got_padded[i, pad:], got_full[i, : SEQ - pad], atol=TOL, rtol=0)


@pytest.mark.multidevice
def test_mesh_placement_equals_single_device(case, mesh8):
    """Placing each shard straight from the checkpoint gives bit-identical parameters."""
    _, path, *_ = case
    mesh, rules = mesh8
    on_mesh = models.load_pretrained(path, mesh=mesh, rules=rules).params
    single = models.load_pretrained(path).params
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), on_mesh, single
    )
