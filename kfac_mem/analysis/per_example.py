"""Per-example curvature in the K-FAC eigenbasis, from projected token factors (pure jnp math).

For example n with layer inputs a_t [d_in] and output gradients g_t [d_out] (g_t = ∂L_n/∂s_t, L_n
the cross-entropy summed over the example's labelled positions), its weight gradient is
Γ_n = Σ_t g_t a_tᵀ [d_out, d_in] and, in the eigenbases U_G, U_A of the population factors,

    Γ̃_n = U_Gᵀ Γ_n U_A = ĝ_nᵀ â_n,   ĝ_n = g_n U_G [S, d_out],   â_n = a_n U_A [S, d_in].

Γ̃_n,ij² is example n's curvature along component u_G,i u_A,jᵀ. Γ̃ is formed from ĝ and â directly
(Γ_n is never formed in the original basis), a block of `row_chunk` rows of Γ̃ at a time, so
peak memory is O(B·row_chunk·d_in). Per example the block loop accumulates
  total   Σ_ij Γ̃²                              (= ‖Γ_n‖_F², basis-free)
  fourth  Σ_ij Γ̃⁴                              (participation ratio = total² / fourth)
  band    Σ_{(i,j) in band b} Γ̃²               (population Π bands, `analysis.bands`)
  top-k   the k largest Γ̃² and their flat indices i·d_in + j
and over the batch Σ_n Γ̃_n² [d_out, d_in] (for EK-FAC eigenvalues and pooled profiles).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def project(x: jax.Array, basis: jax.Array) -> jax.Array:
    """x [B, S, d] @ basis [d, m] in float32 at full precision (coordinates along basis columns)."""
    return jnp.einsum(
        "bsd,dm->bsm",
        x.astype(jnp.float32),
        basis.astype(jnp.float32),
        precision=HIGHEST,
        preferred_element_type=jnp.float32,
    )


def gamma_stats(
    g_hat: jax.Array,
    a_hat: jax.Array,
    counts: jax.Array,
    k: int,
    row_chunk: int,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Per-example statistics of Γ̃_n = ĝ_nᵀ â_n, in blocks of rows.

    Args:
      g_hat: ĝ float32 [B, S, d_out], output gradients in the G eigenbasis (g U_G).
      a_hat: â float32 [B, S, d_in], layer inputs in the A eigenbasis (a U_A).
      counts: int32 [n_bands − 1, d_out], band staircases (`KfacBands.counts`).
      k: number of top directions kept per example (clipped to d_out·d_in).
      row_chunk: rows of Γ̃ formed at once (d_out is zero-padded to a multiple).

    Returns:
      ({"total" [B], "fourth" [B], "band" [B, n_bands], "top_values" [B, k] descending,
        "top_index" int32 [B, k] (flat i·d_in + j)}, Σ_n Γ̃_n² float32 [d_out, d_in]).
    """
    b, _, d_out = g_hat.shape
    d_in = a_hat.shape[-1]
    n_bands = counts.shape[0] + 1
    r = max(1, min(int(row_chunk), d_out))
    n_chunks = -(-d_out // r)
    pad = n_chunks * r - d_out
    k_all = min(int(k), d_out * d_in)
    k_chunk = min(k_all, r * d_in)
    g_chunks = jnp.pad(g_hat, ((0, 0), (0, 0), (0, pad)))
    g_chunks = g_chunks.reshape(b, g_hat.shape[1], n_chunks, r).transpose(2, 0, 1, 3)
    cnt = jnp.pad(counts.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=d_in)
    cnt = cnt.reshape(n_bands - 1, n_chunks, r).transpose(1, 0, 2)  # [n_chunks, n_bands-1, r]
    rows = jnp.arange(n_chunks * r, dtype=jnp.int32).reshape(n_chunks, r)
    cols = jnp.arange(d_in, dtype=jnp.int32)

    def body(carry, xs):
        total, fourth, band, top_v, top_i = carry
        gc, cc, rw = xs
        gam = jnp.einsum(
            "bsr,bsi->bri", gc, a_hat, precision=HIGHEST, preferred_element_type=jnp.float32
        )
        valid = (rw < d_out)[None, :, None]
        sq = jnp.where(valid, gam * gam, 0.0)
        total = total + sq.sum((1, 2))
        fourth = fourth + (sq * sq).sum((1, 2))
        band_id = (cols[None, None, :] >= cc[:, :, None]).sum(0)  # [r, d_in]
        onehot = jax.nn.one_hot(band_id, n_bands, dtype=jnp.float32)
        band = band + jnp.einsum("bri,rin->bn", sq, onehot, precision=HIGHEST)
        flat = jnp.where(valid, sq, -1.0).reshape(b, r * d_in)
        v, i = jax.lax.top_k(flat, k_chunk)
        i = i.astype(jnp.int32) + rw[0] * d_in
        # Earlier blocks first: lax.top_k puts the lower position first on ties (row-major order).
        all_v, all_i = jnp.concatenate([top_v, v], 1), jnp.concatenate([top_i, i], 1)
        top_v, pick = jax.lax.top_k(all_v, k_all)
        top_i = jnp.take_along_axis(all_i, pick, 1)
        return (total, fourth, band, top_v, top_i), sq.sum(0)

    init = (
        jnp.zeros((b,), jnp.float32),
        jnp.zeros((b,), jnp.float32),
        jnp.zeros((b, n_bands), jnp.float32),
        jnp.full((b, k_all), -jnp.inf, jnp.float32),
        jnp.full((b, k_all), -1, jnp.int32),
    )
    (total, fourth, band, top_v, top_i), sums = jax.lax.scan(body, init, (g_chunks, cnt, rows))
    stats = {
        "total": total,
        "fourth": fourth,
        "band": band,
        "top_values": top_v,
        "top_index": top_i,
    }
    return stats, sums.reshape(n_chunks * r, d_in)[:d_out]


def band_strength(
    coords: jax.Array, weights: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-example sums of band activation strengths over masked positions.

    Args:
      coords: float32 [B, S, m], inputs' coordinates along the basis vectors (x V).
      weights: float32 [m, n_bands], how many band components read each basis vector (n_B).
      mask: [B, S], 1 at the positions that count.

    Returns:
      (Σ_t mask_t ‖P_B x_t‖ [B, n_bands], Σ_t mask_t ‖P_B x_t‖² [B, n_bands]) with
      ‖P_B x‖² = Σ_m weights[m, B] (coords_m)².
    """
    energy = jnp.einsum(
        "bsm,mn->bsn", coords * coords, weights.astype(jnp.float32), precision=HIGHEST
    )
    energy = jnp.maximum(energy, 0.0)
    m = mask.astype(jnp.float32)[..., None]
    return (jnp.sqrt(energy) * m).sum(1), (energy * m).sum(1)
