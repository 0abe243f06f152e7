"""Building blocks shared by all model families.

Every linear layer is a `Linear`: a plain 2-D kernel K [d_in, d_out] applied as `y = x @ K`
(HF stores W = Kᵀ [d_out, d_in]). A `Linear` can expose, without changing the forward result,
  * its input x, sown into the `linear_inputs` collection when that collection is mutable, and
  * its output gradient, through an additive perturbation read from the `perturbations`
    collection when the caller provides one for this layer (differentiate w.r.t. it to get ∂L/∂y).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import axes
from models.partitioning import constrain

CAPTURE = "linear_inputs"
PERTURB = "perturbations"

Initializer = Callable[..., jax.Array]


class Linear(nn.Module):
    """y = x @ kernel (+ bias), kernel [d_in, d_out] with logical axes `kernel_axes`; the bias
    [d_out] (only with `use_bias`, as in ViT) takes the kernel's output axis.

    The input is sown into `linear_inputs` when that collection is mutable, and a `perturbations`
    entry (if given) is added to the output (after the bias): how curvature code sees a and g.
    """

    features: int
    kernel_axes: tuple[str | None, str | None]
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., d_in] -> [..., d_out]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        if self.is_mutable_collection(CAPTURE):
            self.sow(CAPTURE, "inputs", x)
        y = jnp.matmul(x, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, (self.kernel_axes[1],)),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        if self.has_variable(PERTURB, "outputs"):
            y = y + self.get_variable(PERTURB, "outputs").astype(y.dtype)
        return y


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * scale, computed in float32 (as HF's LlamaRMSNorm/Olmo2RMSNorm)."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (axes.NORM,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (scale.astype(jnp.float32) * x32).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding [vocab, d]; `attend` gives the tied output projection."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:  # [B, T] int -> [B, T, d]
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:  # [..., d] -> [..., vocab]
        return jnp.matmul(x.astype(self.dtype), self.embedding.astype(self.dtype).T)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """HF "default" RoPE tables for `positions` [B, T]: cos, sin [B, T, head_dim] in float32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE (HF layout) on x [B, T, H, head_dim] with cos/sin [B, T, head_dim]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)) with HF submodule names."""

    hidden_size: int
    intermediate_size: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gate = Linear(self.intermediate_size, (axes.EMBED, axes.MLP), name="gate_proj", **kw)(x)
        up = Linear(self.intermediate_size, (axes.EMBED, axes.MLP), name="up_proj", **kw)(x)
        h = constrain(jax.nn.silu(gate) * up, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        return Linear(self.hidden_size, (axes.MLP, axes.EMBED), name="down_proj", **kw)(h)
