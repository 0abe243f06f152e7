"""OLMo-2 decoder block (HF `Olmo2DecoderLayer`).

h = x + post_attention_layernorm(self_attn(x));  out = h + post_feedforward_layernorm(mlp(h)).
RMSNorms act on sublayer *outputs*, so gate_proj/up_proj (and q/k/v) read the raw residual stream
and share one input; q_norm/k_norm normalize the full q/k projections before RoPE.
"""

from __future__ import annotations

import flax.linen as nn

from models.attention import Attention, KVCache
from models.config import DecoderConfig
from models.layers import RMSNorm, SwiGLU


class Olmo2Block(nn.Module):
    config: DecoderConfig

    @nn.compact
    def __call__(self, x, cos, sin, k_valid, cache: KVCache | None = None, cache_index=0):
        c = self.config
        kw = dict(dtype=c.compute_dtype, param_dtype=c.storage_dtype)
        attn, cache = Attention(c, qk_norm=True, name="self_attn")(
            x, cos, sin, k_valid, cache, cache_index
        )
        x = x + RMSNorm(c.rms_norm_eps, name="post_attention_layernorm", **kw)(attn)
        mlp = SwiGLU(c.hidden_size, c.intermediate_size, name="mlp", **kw)(x)
        x = x + RMSNorm(c.rms_norm_eps, name="post_feedforward_layernorm", **kw)(mlp)
        return x, cache
