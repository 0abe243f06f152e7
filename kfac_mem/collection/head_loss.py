"""Cross-entropy gradient at the output head, computed in vocabulary chunks.

For hidden states h [B, S, d], head kernel W [d, V] (+ bias b [V]) and per-position weights
w ∈ {0, 1}, the loss is the *summed* cross-entropy L = Σ_t w_t (logsumexp(z_t) − z_t[y_t]) with
z_t = h_t W + b. This module returns ∂L/∂h without ever materializing z for the whole vocabulary:
a first pass over vocabulary chunks builds logsumexp (and, in sampled mode, draws y_t from
softmax(z_t) by the Gumbel-max trick, chunk by chunk); a second pass accumulates
∂L/∂h = Σ_chunks (softmax(z)_chunk − onehot(y)_chunk) W_chunkᵀ. Peak memory is
O(B·S·chunk) instead of O(B·S·V), in float32.

Sampled labels are a function of (key, chunk index, position) only, so they do not depend on the
device count or sharding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ("sampled", "empirical")


def _chunks(W: jax.Array, bias: jax.Array | None, chunk: int):
    d, V = W.shape
    n = -(-V // chunk)
    pad = n * chunk - V
    W = jnp.pad(W, ((0, 0), (0, pad))).reshape(d, n, chunk).transpose(1, 0, 2)  # [n, d, chunk]
    b = jnp.zeros((V,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    b = jnp.pad(b, (0, pad), constant_values=-jnp.inf).reshape(n, chunk)  # padding never wins
    return W, b, n


def head_cotangent(
    hidden: jax.Array,  # [B, S, d]
    W: jax.Array,  # [d, V]
    bias: jax.Array | None,  # [V] or None
    labels: jax.Array,  # [B, S] gold labels (used in empirical mode)
    weights: jax.Array,  # [B, S] in {0, 1}
    mode: str,
    key: jax.Array | None = None,
    chunk: int = 8192,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (∂L/∂hidden [B, S, d] in hidden's dtype, summed loss (float32), labels used [B, S])."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    if mode == "sampled" and key is None:
        raise ValueError("`key` is required in sampled mode.")
    chunk = min(chunk, W.shape[1])
    Wc, bc, n = _chunks(W, bias, chunk)
    h = hidden
    shape = h.shape[:-1]

    def logits(c):
        z = jnp.einsum("bsd,dv->bsv", h, Wc[c].astype(h.dtype), preferred_element_type=jnp.float32)
        return z + bc[c]

    def pass1(carry, c):
        m, s, best_val, best_idx = carry
        z = logits(c)
        m_new = jnp.maximum(m, z.max(-1))
        s = s * jnp.exp(m - m_new) + jnp.exp(z - m_new[..., None]).sum(-1)
        if mode == "sampled":
            cand = z + jax.random.gumbel(jax.random.fold_in(key, c), z.shape, jnp.float32)
            idx = cand.argmax(-1)
            val = jnp.take_along_axis(cand, idx[..., None], -1)[..., 0]
            better = val > best_val
            best_val = jnp.where(better, val, best_val)
            best_idx = jnp.where(better, idx + c * chunk, best_idx)
        return (m_new, s, best_val, best_idx), None

    init = (
        jnp.full(shape, -jnp.inf),
        jnp.zeros(shape),
        jnp.full(shape, -jnp.inf),
        jnp.zeros(shape, jnp.int32),
    )
    (m, s, _, sampled), _ = jax.lax.scan(pass1, init, jnp.arange(n))
    lse = m + jnp.log(s)
    y = sampled if mode == "sampled" else labels.astype(jnp.int32)
    w = weights.astype(jnp.float32)

    def pass2(carry, c):
        dh, z_y = carry
        z = logits(c)
        local = y - c * chunk
        onehot = jax.nn.one_hot(local, chunk, dtype=jnp.float32)  # zero when y is in another chunk
        z_y = z_y + jnp.sum(jnp.where(onehot > 0, z, 0.0), -1)
        p = (jnp.exp(z - lse[..., None]) - onehot) * w[..., None]
        dh = dh + jnp.einsum(
            "bsv,dv->bsd",
            p.astype(h.dtype),
            Wc[c].astype(h.dtype),
            preferred_element_type=jnp.float32,
        )
        return (dh, z_y), None

    (dh, z_y), _ = jax.lax.scan(
        pass2, (jnp.zeros(h.shape, jnp.float32), jnp.zeros(shape)), jnp.arange(n)
    )
    loss = jnp.sum(w * (lse - z_y))
    return dh.astype(hidden.dtype), loss, y
