"""Causal grouped-query self-attention with RoPE, optional QK-norm and an explicit KV cache."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import axes
from models.config import DecoderConfig
from models.layers import Linear, RMSNorm, apply_rope
from models.partitioning import constrain

_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


class KVCache(NamedTuple):
    """Keys/values of one layer for every slot of the sequence buffer: [B, T_max, H_kv, head_dim]."""

    k: jax.Array
    v: jax.Array


def attention_mask(q_slots: jax.Array, k_valid: jax.Array) -> jax.Array:
    """Causal + padding mask [B, 1, 1, T_q, T_k]: key slot s visible from query slot t iff s <= t
    and `k_valid[b, s]`. `q_slots` [T_q] are the buffer slots of the queries."""
    k_slots = jnp.arange(k_valid.shape[1])
    causal = k_slots[None, :] <= q_slots[:, None]  # [T_q, T_k]
    return (causal[None] & k_valid[:, None, :])[:, None, None]


class Attention(nn.Module):
    config: DecoderConfig
    qk_norm: bool  # OLMo-2: RMSNorm over the full q and k projections (before RoPE)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [B, T, d]
        cos: jax.Array,  # [B, T, head_dim]
        sin: jax.Array,
        k_valid: jax.Array,  # [B, T_k] bool: T_k = T without a cache, T_max with one
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,  # slot of x[:, 0] in the cache buffer
    ) -> tuple[jax.Array, KVCache | None]:
        c = self.config
        b, t, _ = x.shape
        kw = dict(dtype=c.compute_dtype, param_dtype=c.storage_dtype)
        q = Linear(c.num_heads * c.head_dim, (axes.EMBED, axes.Q_HEADS), name="q_proj", **kw)(x)
        k = Linear(c.num_kv_heads * c.head_dim, (axes.EMBED, axes.KV_HEADS), name="k_proj", **kw)(x)
        v = Linear(c.num_kv_heads * c.head_dim, (axes.EMBED, axes.KV_HEADS), name="v_proj", **kw)(x)
        if self.qk_norm:
            q = RMSNorm(c.rms_norm_eps, name="q_norm", **kw)(q)
            k = RMSNorm(c.rms_norm_eps, name="k_norm", **kw)(k)
        q = apply_rope(q.reshape(b, t, c.num_heads, c.head_dim), cos, sin)
        k = apply_rope(k.reshape(b, t, c.num_kv_heads, c.head_dim), cos, sin)
        v = v.reshape(b, t, c.num_kv_heads, c.head_dim)

        q_slots = cache_index + jnp.arange(t)
        if cache is not None:
            k = jax.lax.dynamic_update_slice(
                cache.k, k.astype(cache.k.dtype), (0, cache_index, 0, 0)
            )
            v = jax.lax.dynamic_update_slice(
                cache.v, v.astype(cache.v.dtype), (0, cache_index, 0, 0)
            )
            cache = KVCache(k, v)

        groups = c.num_heads // c.num_kv_heads
        q = q.reshape(b, t, c.num_kv_heads, groups, c.head_dim)
        scores = jnp.einsum(
            "btkgd,bskd->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32
        )
        scores = scores * (c.head_dim**-0.5)
        scores = jnp.where(attention_mask(q_slots, k_valid), scores, _MASKED)
        probs = jax.nn.softmax(scores, axis=-1).astype(c.compute_dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(c.compute_dtype))
        out = constrain(
            out.reshape(b, t, c.num_heads * c.head_dim), (axes.ACT_BATCH, axes.ACT_LENGTH, None)
        )
        out = Linear(c.hidden_size, (axes.Q_HEADS, axes.EMBED), name="o_proj", **kw)(out)
        return out, cache
