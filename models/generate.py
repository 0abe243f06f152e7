"""Batched greedy decoding with a KV cache under jit, for left-padded prompts of different lengths.

Prompts are left-padded to a bucketed length P, so every row's next token sits at the same buffer
slot; RoPE positions count only real tokens and padded slots are masked out of attention. The
cache buffer has P + max_new_tokens slots.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models.attention import KVCache
from models.language_model import LanguageModel, Params


def left_pad(
    prompts: Sequence[Sequence[int]], bucket: int = 16, pad_id: int = 0, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """-> tokens [rows, P], mask [rows, P] (1 = real token), P = max length rounded up to `bucket`.
    Extra rows (to reach a fixed batch size) are all padding except a single dummy token."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token.")
    width = -(-max(len(p) for p in prompts) // bucket) * bucket
    rows = rows or len(prompts)
    tokens = np.full((rows, width), pad_id, np.int32)
    mask = np.zeros((rows, width), np.int32)
    mask[len(prompts) :, -1] = 1
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return tokens, mask


@functools.partial(jax.jit, static_argnums=(0, 4))
def _generate(
    model: LanguageModel, params: Params, tokens: jax.Array, mask: jax.Array, max_new: int
):
    c = model.config
    b, p = tokens.shape
    slots = p + max_new
    caches = [
        KVCache(
            jnp.zeros((b, slots, c.num_kv_heads, c.head_dim), c.compute_dtype),
            jnp.zeros((b, slots, c.num_kv_heads, c.head_dim), c.compute_dtype),
        )
        for _ in range(c.num_layers)
    ]
    k_valid = jnp.concatenate([mask.astype(bool), jnp.ones((b, max_new), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, caches = model.apply(
        params, tokens, positions=positions, k_valid=k_valid, caches=caches, cache_index=0
    )
    first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    last_pos = positions[:, -1]

    def step(carry, i):
        token, caches = carry
        logits, caches = model.apply(
            params,
            token[:, None],
            positions=(last_pos + 1 + i)[:, None],
            k_valid=k_valid,
            caches=caches,
            cache_index=p + i,
        )
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return (nxt, caches), nxt

    _, rest = jax.lax.scan(step, (first, caches), jnp.arange(max_new - 1))
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def greedy_generate(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    params: Params | None = None,
    batch_size: int = 32,
    bucket: int = 16,
) -> np.ndarray:
    """Greedy continuations [len(prompts), max_new_tokens] (no early stop at EOS).

    Prompts are processed in batches of `batch_size` rows (the last one padded), with prompt
    lengths bucketed to multiples of `bucket`, so a handful of shapes are compiled.
    """
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
    params = model.params if params is None else params
    pad_id = model.config.pad_token_id or 0
    out = np.zeros((len(prompts), max_new_tokens), np.int32)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        tokens, mask = left_pad(chunk, bucket, pad_id, rows=batch_size)
        gen = _generate(model, params, jnp.asarray(tokens), jnp.asarray(mask), max_new_tokens)
        out[start : start + len(chunk)] = np.asarray(gen)[: len(chunk)]
    return out
