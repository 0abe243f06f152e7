"""The decoder stack shared by OLMo-2 and Llama: embeddings, unrolled blocks, final norm, head.

Parameters mirror HF module paths: `model.embed_tokens.embedding`, `model.layers.{i}.<...>.kernel`,
`model.norm.scale`, `lm_head.kernel` (absent when embeddings are tied). Layers are unrolled, not
scanned, so curvature code sees every linear layer under its own path.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import axes
from models.attention import KVCache
from models.config import DecoderConfig
from models.layers import Embed, Linear, RMSNorm, rope_cos_sin
from models.llama import LlamaBlock
from models.olmo2 import Olmo2Block
from models.partitioning import constrain

BLOCKS = {"olmo2": Olmo2Block, "llama": LlamaBlock}


class Layers(nn.Module):
    config: DecoderConfig
    remat: bool = False

    @nn.compact
    def __call__(self, x, cos, sin, k_valid, caches=None, cache_index=0):
        block_cls = BLOCKS[self.config.family]
        if self.remat:
            block_cls = nn.remat(block_cls)
        new_caches = []
        for i in range(self.config.num_layers):
            cache = None if caches is None else caches[i]
            x, cache = block_cls(self.config, name=str(i))(x, cos, sin, k_valid, cache, cache_index)
            x = constrain(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
            new_caches.append(cache)
        return x, (None if caches is None else new_caches)


class Backbone(nn.Module):
    config: DecoderConfig
    remat: bool = False

    def setup(self):
        c = self.config
        kw = dict(dtype=c.compute_dtype, param_dtype=c.storage_dtype)
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, **kw)
        self.layers = Layers(c, self.remat)
        self.norm = RMSNorm(c.rms_norm_eps, **kw)

    def __call__(self, tokens, positions, k_valid, caches=None, cache_index=0):
        x = constrain(self.embed_tokens(tokens), (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        x, caches = self.layers(x, cos, sin, k_valid, caches, cache_index)
        return self.norm(x), caches

    def attend(self, h):
        return self.embed_tokens.attend(h)


class Decoder(nn.Module):
    """Causal LM. Returns (logits [B, T, V] or final hidden [B, T, d], new caches or None)."""

    config: DecoderConfig
    remat: bool = False

    def setup(self):
        c = self.config
        self.model = Backbone(c, self.remat)
        if not c.tie_word_embeddings:
            self.lm_head = Linear(
                c.vocab_size,
                (axes.EMBED, axes.VOCAB),
                dtype=c.compute_dtype,
                param_dtype=c.storage_dtype,
            )

    def __call__(
        self,
        tokens: jax.Array,  # [B, T] int
        positions: jax.Array | None = None,  # [B, T] int; default 0..T-1
        k_valid: jax.Array | None = None,  # [B, T_k] bool; default all valid
        caches: Sequence[KVCache] | None = None,
        cache_index: jax.Array | int = 0,
        return_hidden: bool = False,
    ):
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        if k_valid is None:
            t_k = t if caches is None else caches[0].k.shape[1]
            k_valid = jnp.ones((b, t_k), bool)
        h, caches = self.model(tokens, positions, k_valid, caches, cache_index)
        if return_hidden:
            return h, caches
        logits = self.model.attend(h) if self.config.tie_word_embeddings else self.lm_head(h)
        return constrain(logits, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB)), caches


def head_kernel(config: DecoderConfig, params) -> jax.Array:
    """The output projection as a [d, V] kernel (the transposed embedding when tied)."""
    if config.tie_word_embeddings:
        return params["model"]["embed_tokens"]["embedding"].T
    return params["lm_head"]["kernel"]
