"""Jitted forward kernels shared by the evaluation suites (one compile per model shape and bucket).

All take the model as a static argument (`LanguageModel` hashes on config and placement, not on
weights, so an edited parameter tree reuses the compiled code) and an explicit `params` tree.
Token arrays are right-padded where lengths differ: a causal decoder never lets a real token see
a pad that follows it, so no attention mask is needed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _logits(model, params, tokens: jax.Array) -> jax.Array:
    return model.apply(params, tokens)[0].astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def token_nll(model, params, tokens: jax.Array) -> jax.Array:
    """Next-token negative log-likelihood (nats), float32 [B, L-1], of windows `tokens` [B, L]:
    entry t is −log p(tokens[:, t+1] | tokens[:, :t+1])."""
    logp = jax.nn.log_softmax(_logits(model, params, tokens)[:, :-1], axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnums=(0, 3))
def top_k_ids(model, params, tokens: jax.Array, k: int) -> jax.Array:
    """Ids of the k most likely next tokens at every position, int32 [B, L, k], best first
    (ties broken toward the lower id, as `jax.lax.top_k` does)."""
    return jax.lax.top_k(_logits(model, params, tokens), k)[1].astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 3))
def suffix_argmax_matches(model, params, tokens: jax.Array, prefix_len: int) -> jax.Array:
    """Teacher-forced check of windows [B, P + S]: bool [B, S], entry i true iff the argmax
    prediction at position P − 1 + i equals tokens[:, P + i]."""
    pred = jnp.argmax(_logits(model, params, tokens)[:, prefix_len - 1 : -1], axis=-1)
    return pred == tokens[:, prefix_len:]


@functools.partial(jax.jit, static_argnums=(0, 4))
def suffix_argmax_matches_at(
    model, params, tokens: jax.Array, prefix_lens: jax.Array, suffix_len: int
) -> jax.Array:
    """`suffix_argmax_matches` for rows whose prefixes differ in length: tokens [B, W], each row
    `prefix ‖ suffix ‖ pad` (right padding), prefix_lens int32 [B] (≥ 1), every suffix
    `suffix_len` tokens. bool [B, suffix_len], entry i true iff the argmax at position
    prefix_lens − 1 + i equals the token at prefix_lens + i."""
    w = tokens.shape[1]
    pos = jnp.clip(prefix_lens[:, None] - 1 + jnp.arange(suffix_len)[None], 0, w - 2)
    pred = jnp.argmax(
        jnp.take_along_axis(_logits(model, params, tokens), pos[..., None], axis=1), axis=-1
    )
    return pred == jnp.take_along_axis(tokens, pos + 1, axis=1)


def score_hidden(
    model,
    params,
    hidden: jax.Array,
    tokens: jax.Array,
    cont_start: jax.Array,
    cont_len: jax.Array,
    width: int,
) -> tuple[jax.Array, jax.Array]:
    """Continuation log-likelihoods from final hidden states [B, S, d] of rows tokens [B, S]
    (see `continuation_scores`); only the `width` predicting positions go through the head."""
    s = tokens.shape[1]
    target_pos = jnp.clip(cont_start[:, None] + jnp.arange(width)[None], 0, s - 1)  # [B, C]
    h = jnp.take_along_axis(hidden, (jnp.maximum(target_pos - 1, 0))[..., None], axis=1)
    dtype = model.config.compute_dtype
    logits = jnp.matmul(h.astype(dtype), model.head_kernel(params).astype(dtype)).astype(
        jnp.float32
    )
    targets = jnp.take_along_axis(tokens, target_pos, axis=1)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)
    valid = jnp.arange(width)[None] < cont_len[:, None]
    greedy = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(jnp.where(valid, logp[..., 0], 0.0), axis=1), jnp.all(greedy | ~valid, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 5))
def continuation_scores(
    model, params, tokens: jax.Array, cont_start: jax.Array, cont_len: jax.Array, width: int
) -> tuple[jax.Array, jax.Array]:
    """Log-likelihood of each row's continuation given its context.

    Args:
      tokens: int32 [B, S], each row `context ‖ continuation ‖ pad` (right padding).
      cont_start: int32 [B], index of the continuation's first token (≥ 1).
      cont_len: int32 [B], continuation length (≤ width).
      width: static bucket for continuation lengths.

    Returns:
      (sum of log p over continuation tokens, float32 [B]; whether every continuation token is the
      argmax prediction, bool [B]). Only the `width` positions that predict continuation tokens go
      through the output head.
    """
    hidden = model.apply(params, tokens, return_hidden=True)[0]  # [B, S, d]
    return score_hidden(model, params, hidden, tokens, cont_start, cont_len, width)
