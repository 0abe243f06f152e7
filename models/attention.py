"""Causal grouped-query self-attention with RoPE, optional QK-norm and an explicit KV cache.

The score/softmax/value product goes through `jax.nn.dot_product_attention` (`config.attention`:
"xla", the default, or "cudnn", cuDNN's fused flash attention on NVIDIA GPUs), or through
`einsum_attention` ("einsum": explicit [B, heads, T, T] scores, the reference the others are tested
against). All three compute scores and softmax in float32 and return the compute dtype.
"""

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
    """Causal + padding mask [B, 1, T_q, T_k]: key slot s visible from query slot t iff s <= t
    and `k_valid[b, s]`. `q_slots` [T_q] are the buffer slots of the queries."""
    k_slots = jnp.arange(k_valid.shape[1])
    causal = k_slots[None, :] <= q_slots[:, None]  # [T_q, T_k]
    return (causal[None] & k_valid[:, None, :])[:, None]


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, dtype) -> jax.Array:
    """Reference attention with explicit scores: q [B, T, H, D], k/v [B, S, H_kv, D], mask
    [B, 1, T, S] -> [B, T, H, D] in `dtype` (softmax(q kᵀ / √D) v, float32 scores)."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum(
        "btkgd,bskd->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32
    )
    scores = jnp.where(mask[:, :, None], scores * (d**-0.5), _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dtype))
    return out.reshape(b, t, h, d)


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, dtype, implementation: str
) -> jax.Array:
    """Grouped-query attention [B, T, H, D] by `implementation` ("xla", "cudnn" or "einsum")."""
    if implementation == "einsum":
        return einsum_attention(q, k, v, mask, dtype)
    out = jax.nn.dot_product_attention(
        q.astype(dtype),
        k.astype(dtype),
        v.astype(dtype),
        mask=mask,
        scale=q.shape[-1] ** -0.5,
        implementation=implementation,
    )
    return out.astype(dtype)


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

        out = attend(q, k, v, attention_mask(q_slots, k_valid), c.compute_dtype, c.attention)
        out = constrain(
            out.reshape(b, t, c.num_heads * c.head_dim), (axes.ACT_BATCH, axes.ACT_LENGTH, None)
        )
        out = Linear(c.hidden_size, (axes.Q_HEADS, axes.EMBED), name="o_proj", **kw)(out)
        return out, cache
