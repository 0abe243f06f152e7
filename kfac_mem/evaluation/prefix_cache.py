"""Shared-prefix evaluation: run the context prefix common to a task's requests once.

Few-shot tasks repeat the same demonstrations in front of every request (hundreds of tokens in
BoolQ or GSM8K). The shared prefix is prefilled once into a KV cache (one row, left-padded to a
bucket); each batch then copies that cache to its rows and runs only the remaining tokens, at
positions continuing after the prefix. The tokens and positions each prediction sees are the same
as in a full forward, so the numbers agree with it up to float rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kfac_mem.evaluation.scoring import score_hidden
from models.attention import KVCache

MIN_SHARED = 32  # shorter common prefixes are not worth a separate prefill


def shared_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens common to the start of every sequence, less one, so that each sequence keeps at
    least one token of its own after the prefix (0 when fewer than `MIN_SHARED` are shared)."""
    if not seqs:
        return 0
    first = np.asarray(seqs[0])
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        neq = np.flatnonzero(np.asarray(s[:n]) != first[:n])
        n = int(neq[0]) if neq.size else n
    n = min(n, min(len(s) for s in seqs) - 1)
    return n if n >= MIN_SHARED else 0


@functools.partial(jax.jit, static_argnums=0)
def prefill(model, params, tokens: jax.Array, mask: jax.Array) -> list[KVCache]:
    """KV caches [1, W, H_kv, head_dim] per layer of one left-padded prefix row tokens/mask [1, W]."""
    c = model.config
    shape = (1, tokens.shape[1], c.num_kv_heads, c.head_dim)
    caches = [
        KVCache(jnp.zeros(shape, c.compute_dtype), jnp.zeros(shape, c.compute_dtype))
        for _ in range(c.num_layers)
    ]
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    _, caches = model.apply(
        params, tokens, positions=positions, k_valid=mask.astype(bool), caches=caches, cache_index=0
    )
    return caches


def _extend(caches: list[KVCache], rows: int, extra: int) -> list[KVCache]:
    """Copy one-row caches to `rows` rows and append `extra` empty slots."""

    def grow(x):
        x = jnp.broadcast_to(x, (rows, *x.shape[1:]))
        return jnp.concatenate([x, jnp.zeros((rows, extra, *x.shape[2:]), x.dtype)], axis=1)

    return [KVCache(grow(cache.k), grow(cache.v)) for cache in caches]


@functools.partial(jax.jit, static_argnums=(0, 8))
def continuation_scores_after(
    model,
    params,
    caches,
    prefix_mask: jax.Array,
    n_prefix: jax.Array,
    tokens: jax.Array,
    cont_start: jax.Array,
    cont_len: jax.Array,
    width: int,
) -> tuple[jax.Array, jax.Array]:
    """`scoring.continuation_scores` for rows that continue a prefilled prefix.

    Args:
      caches, prefix_mask [1, W0], n_prefix (int scalar): the prefix from `prefill`.
      tokens: int32 [B, R], each row `rest of context ‖ continuation ‖ pad` (right padding).
      cont_start: int32 [B], index in the row of the continuation's first token (≥ 1).
      cont_len: int32 [B]; width: static bucket for continuation lengths.
    """
    b, r = tokens.shape
    w0 = prefix_mask.shape[1]
    k_valid = jnp.concatenate(
        [jnp.broadcast_to(prefix_mask.astype(bool), (b, w0)), jnp.ones((b, r), bool)], axis=1
    )
    positions = jnp.broadcast_to(n_prefix + jnp.arange(r)[None], (b, r))
    hidden, _ = model.apply(
        params,
        tokens,
        positions=positions,
        k_valid=k_valid,
        caches=_extend(caches, b, r),
        cache_index=w0,
        return_hidden=True,
    )
    return score_hidden(model, params, hidden, tokens, cont_start, cont_len, width)


@functools.partial(jax.jit, static_argnums=(0, 7))
def generate_after(
    model,
    params,
    caches,
    prefix_mask: jax.Array,
    n_prefix: jax.Array,
    tokens: jax.Array,
    mask: jax.Array,
    max_new: int,
) -> jax.Array:
    """Greedy continuations int32 [B, max_new] of left-padded rows tokens/mask [B, R] that
    continue a prefilled prefix (same decoding as `models.greedy_generate`, no early stop)."""
    b, r = tokens.shape
    w0 = prefix_mask.shape[1]
    k_valid = jnp.concatenate(
        [
            jnp.broadcast_to(prefix_mask.astype(bool), (b, w0)),
            mask.astype(bool),
            jnp.ones((b, max_new), bool),
        ],
        axis=1,
    )
    positions = n_prefix + jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    caches = _extend(caches, b, r + max_new)
    logits, caches = model.apply(
        params, tokens, positions=positions, k_valid=k_valid, caches=caches, cache_index=w0
    )
    first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    last = positions[:, -1]

    def step(carry, i):
        token, caches = carry
        logits, caches = model.apply(
            params,
            token[:, None],
            positions=(last + 1 + i)[:, None],
            k_valid=k_valid,
            caches=caches,
            cache_index=w0 + r + i,
        )
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return (nxt, caches), nxt

    _, rest = jax.lax.scan(step, (first, caches), jnp.arange(max_new - 1))
    return jnp.concatenate([first[:, None], rest.T], axis=1)
