"""GGUF (llama.cpp) checkpoints of Llama-architecture models: config, weights, tokenizer.

Quantized tensors are dequantized with the `gguf` package, one tensor at a time when it is placed.
llama.cpp stores q/k weights permuted for its interleaved RoPE; they are un-permuted to HF's
rotate-half layout here.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from models.config import DecoderConfig
from models.placement import TensorSource

_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _reader(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except Exception as e:  # gguf raises bare ValueError/struct errors on bad files
        raise ValueError(f"{path}: not a readable GGUF file ({e}).") from e


def _field(reader, key: str, default: Any = KeyError) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is KeyError:
            raise ValueError(
                f"GGUF metadata key `{key}` is missing; cannot build the model config."
            )
        return default
    return field.contents()


def hf_name_for(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    raise ValueError(f"GGUF tensor `{gguf_name}` has no counterpart in the Llama decoder.")


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's interleaved-RoPE row order -> HF rotate-half order, for W [n_heads*hd, d_in]."""
    out, d_in = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, d_in).swapaxes(1, 2).reshape(out, d_in)


class GGUFCheckpoint:
    def __init__(self, path: str):
        self.path = path
        self.reader = _reader(path)
        arch = _field(self.reader, "general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama').")

    def config(self, **overrides: Any) -> DecoderConfig:
        r, a = self.reader, "llama"
        heads = int(_field(r, f"{a}.attention.head_count"))
        hidden = int(_field(r, f"{a}.embedding_length"))
        names = {t.name for t in r.tensors}
        vocab = _field(r, f"{a}.vocab_size", None) or len(_field(r, "tokenizer.ggml.tokens"))
        if _field(r, f"{a}.rope.scaling.type", None) not in (None, "none"):
            raise ValueError(f"{self.path}: RoPE scaling is not supported.")
        return DecoderConfig(
            family="llama",
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(_field(r, f"{a}.feed_forward_length")),
            num_layers=int(_field(r, f"{a}.block_count")),
            num_heads=heads,
            num_kv_heads=int(_field(r, f"{a}.attention.head_count_kv", heads)),
            head_dim=int(_field(r, f"{a}.rope.dimension_count", hidden // heads)),
            rope_theta=float(_field(r, f"{a}.rope.freq_base", 10000.0)),
            rms_norm_eps=float(f"{float(_field(r, f'{a}.attention.layer_norm_rms_epsilon')):.6g}"),
            tie_word_embeddings="output.weight" not in names,
            max_position_embeddings=int(_field(r, f"{a}.context_length", 4096)),
            bos_token_id=_field(r, "tokenizer.ggml.bos_token_id", None),
            eos_token_id=_field(r, "tokenizer.ggml.eos_token_id", None),
            pad_token_id=_field(r, "tokenizer.ggml.padding_token_id", None),
            **overrides,
        )

    def tensor_source(self, config: DecoderConfig) -> TensorSource:
        tensors = {hf_name_for(t.name): t for t in self.reader.tensors}

        @functools.lru_cache(maxsize=2)
        def load(name):
            from gguf.quants import dequantize

            t = tensors[name]
            w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
            w = w.reshape([int(n) for n in reversed(t.shape)])  # ggml lists dims innermost-first
            if name.endswith("q_proj.weight"):
                w = unpermute_rope(w, config.num_heads)
            elif name.endswith("k_proj.weight"):
                w = unpermute_rope(w, config.num_kv_heads)
            return w

        getters = {name: (lambda name=name: load(name)) for name in tensors}
        return TensorSource(getters, {}, self.path)

    def tokenizer(self):
        """A `tokenizers.Tokenizer` rebuilt from the GGUF byte-level BPE vocabulary and merges."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        r = self.reader
        kind = _field(r, "tokenizer.ggml.model", None)
        if kind != "gpt2":
            raise ValueError(
                f"{self.path}: tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')."
            )
        tokens = list(_field(r, "tokenizer.ggml.tokens"))
        merges = [tuple(m.split(" ", 1)) for m in _field(r, "tokenizer.ggml.merges")]
        types = list(_field(r, "tokenizer.ggml.token_type", [1] * len(tokens)))
        tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
        pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if _field(r, "tokenizer.ggml.pre", None) in ("smollm", "llama3", "qwen2", "deepseek-llm"):
            pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(
            [AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3]
        )
        return tok
