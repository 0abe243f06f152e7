"""Batched decoding with a KV cache under jit, for left-padded prompts of different lengths:
greedy, seeded sampling (temperature, top-k, top-p) and beam search.

Prompts are left-padded to a bucketed length P, so every row's next token sits at the same buffer
slot; RoPE positions count only real tokens and padded slots are masked out of attention. The
cache buffer has P + max_new_tokens slots. Sampled rows draw from their own PRNG key (one per
row, chosen by the caller), so a row's samples do not depend on batching or device count. Beam
search keeps `width` hypotheses per prompt as a batch dimension of rows × width and reorders the
caches by each step's parent beams.
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


def _prefill(
    model: LanguageModel, params: Params, tokens: jax.Array, mask: jax.Array, max_new: int
):
    """(last-position logits float32 [B, V], caches, k_valid [B, P + max_new], last position [B])."""
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
    return logits[:, -1].astype(jnp.float32), caches, k_valid, positions[:, -1]


def _decode_step(model, params, token, caches, k_valid, position, cache_index):
    """One cached step: logits float32 [B, V] of the next token after `token` [B]."""
    logits, caches = model.apply(
        params,
        token[:, None],
        positions=position[:, None],
        k_valid=k_valid,
        caches=caches,
        cache_index=cache_index,
    )
    return logits[:, -1].astype(jnp.float32), caches


@functools.partial(jax.jit, static_argnums=(0, 4))
def _generate(
    model: LanguageModel, params: Params, tokens: jax.Array, mask: jax.Array, max_new: int
):
    p = tokens.shape[1]
    logits, caches, k_valid, last_pos = _prefill(model, params, tokens, mask, max_new)
    first = jnp.argmax(logits, axis=-1).astype(jnp.int32)

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


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """`logits` [B, V] with every token outside the top-k (top_k > 0) and outside the smallest set
    whose probability reaches top_p (top_p < 1; the most likely token always stays) set to −inf."""
    neg = jnp.finfo(logits.dtype).min
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        keep_sorted = before < top_p
        keep = (
            jnp.zeros_like(keep_sorted)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(keep_sorted)
        )
        logits = jnp.where(keep, logits, neg)
    return logits


def _draw(keys, step, logits, temperature, top_k, top_p):
    """One token per row [B] from softmax(filtered logits / temperature), row keys [B, 2]."""
    scaled = filter_logits(logits / temperature, top_k, top_p)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    return jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 4, 6, 7))
def _sample(model, params, tokens, mask, max_new, keys, top_k, top_p, temperature):
    p = tokens.shape[1]
    logits, caches, k_valid, last_pos = _prefill(model, params, tokens, mask, max_new)
    first = _draw(keys, 0, logits, temperature, top_k, top_p)

    def step(carry, i):
        token, caches = carry
        logits, caches = _decode_step(
            model, params, token, caches, k_valid, last_pos + 1 + i, p + i
        )
        nxt = _draw(keys, i + 1, logits, temperature, top_k, top_p)
        return (nxt, caches), nxt

    _, rest = jax.lax.scan(step, (first, caches), jnp.arange(max_new - 1))
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def sample_generate(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    row_seeds: Sequence[int],
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    params: Params | None = None,
    batch_size: int = 32,
    bucket: int = 16,
) -> np.ndarray:
    """Sampled continuations [len(prompts), max_new_tokens] (no early stop at EOS).

    Row i draws token t from softmax(filter(logits) / temperature) with the key
    fold_in(fold_in(PRNGKey(0), row_seeds[i]), t), so a row's continuation depends only on its
    seed, its prompt and the weights (not on batch size, batch position or device count).
    `temperature` 0 is greedy decoding. `top_k` 0 and `top_p` 1 switch those filters off.
    """
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
    if len(row_seeds) != len(prompts):
        raise ValueError(f"`row_seeds` needs one seed per prompt, got {len(row_seeds)}.")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(
            f"Need `temperature` >= 0, 0 < `top_p` <= 1 and `top_k` >= 0; got {temperature}, "
            f"{top_p}, {top_k}."
        )
    if temperature == 0:
        return greedy_generate(
            model, prompts, max_new_tokens, params=params, batch_size=batch_size, bucket=bucket
        )
    params = model.params if params is None else params
    pad_id = model.config.pad_token_id or 0
    base = jax.random.PRNGKey(0)
    seeds = np.asarray(row_seeds, np.uint32)
    out = np.zeros((len(prompts), max_new_tokens), np.int32)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        tokens, mask = left_pad(chunk, bucket, pad_id, rows=batch_size)
        s = np.zeros(batch_size, np.uint32)
        s[: len(chunk)] = seeds[start : start + len(chunk)]
        keys = jax.vmap(lambda x: jax.random.fold_in(base, x))(jnp.asarray(s))
        gen = _sample(
            model,
            params,
            jnp.asarray(tokens),
            jnp.asarray(mask),
            max_new_tokens,
            keys,
            int(top_k),
            float(top_p),
            jnp.float32(temperature),
        )
        out[start : start + len(chunk)] = np.asarray(gen)[: len(chunk)]
    return out


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _beam(model, params, tokens, mask, max_new, width):
    r, p = tokens.shape
    rep = lambda x: jnp.repeat(x, width, axis=0)  # noqa: E731  [R, ...] -> [R·W, ...]
    logits, caches, k_valid, last_pos = _prefill(model, params, rep(tokens), rep(mask), max_new)
    vocab = logits.shape[-1]
    # All W copies are the same prompt: start from one live beam so the first step picks W
    # distinct tokens.
    scores = jnp.where(jnp.arange(width)[None] == 0, 0.0, -jnp.inf) * jnp.ones((r, 1))
    history = jnp.zeros((r, width, max_new), jnp.int32)
    rows = jnp.arange(r)[:, None]

    def expand(scores, logits, history, caches, i):
        logp = jax.nn.log_softmax(logits, axis=-1).reshape(r, width, vocab)
        total = (scores[:, :, None] + logp).reshape(r, width * vocab)
        scores, flat = jax.lax.top_k(total, width)  # [R, W], best first
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        history = history[rows, parent].at[:, :, i].set(token)
        src = (rows * width + parent).reshape(-1)
        caches = jax.tree_util.tree_map(lambda x: x[src], caches)
        return scores, history, caches, token.reshape(-1)

    scores, history, caches, token = expand(scores, logits, history, caches, 0)

    def step(carry, i):
        scores, history, caches, token = carry
        logits, caches = _decode_step(
            model, params, token, caches, k_valid, last_pos + 1 + i, p + i
        )
        return expand(scores, logits, history, caches, i + 1), None

    (scores, history, _, _), _ = jax.lax.scan(
        step, (scores, history, caches, token), jnp.arange(max_new - 1)
    )
    return history, scores


def beam_search(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    width: int = 8,
    *,
    params: Params | None = None,
    batch_size: int = 4,
    bucket: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Beam search without length normalization or early stop.

    Returns:
      (beams int32 [N, width, max_new_tokens], their total log-probabilities float32 [N, width]),
      best first. A batch holds `batch_size` prompts, i.e. batch_size × width decoder rows.
      Width 1 is greedy decoding.
    """
    if max_new_tokens < 1 or width < 1:
        raise ValueError(
            f"Need `max_new_tokens` >= 1 and `width` >= 1, got {max_new_tokens}, {width}."
        )
    if width > model.config.vocab_size:
        raise ValueError(f"`width` {width} exceeds the vocabulary ({model.config.vocab_size}).")
    params = model.params if params is None else params
    pad_id = model.config.pad_token_id or 0
    beams = np.zeros((len(prompts), width, max_new_tokens), np.int32)
    scores = np.zeros((len(prompts), width), np.float32)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        tokens, mask = left_pad(chunk, bucket, pad_id, rows=batch_size)
        h, s = _beam(model, params, jnp.asarray(tokens), jnp.asarray(mask), max_new_tokens, width)
        beams[start : start + len(chunk)] = np.asarray(h)[: len(chunk)]
        scores[start : start + len(chunk)] = np.asarray(s)[: len(chunk)]
    return beams, scores
