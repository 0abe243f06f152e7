"""Llama-family decoder block (HF `LlamaDecoderLayer`; covers SmolLM2).

h = x + self_attn(input_layernorm(x));  out = h + mlp(post_attention_layernorm(h)).
"""

from __future__ import annotations

import flax.linen as nn

from models.attention import Attention, KVCache
from models.config import DecoderConfig
from models.layers import RMSNorm, SwiGLU


class LlamaBlock(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x, cos, sin, k_valid, cache: KVCache | None = None, cache_index=0):
        c = self.config
        kw = dict(dtype=c.compute_dtype, param_dtype=c.storage_dtype)
        h = RMSNorm(c.rms_norm_eps, name="input_layernorm", **kw)(x)
        attn, cache = Attention(c, qk_norm=False, name="self_attn")(
            h, cos, sin, k_valid, cache, cache_index
        )
        x = x + attn
        h = RMSNorm(c.rms_norm_eps, name="post_attention_layernorm", **kw)(x)
        x = x + SwiGLU(c.hidden_size, c.intermediate_size, name="mlp", **kw)(h)
        return x, cache
