"""Flax ViT classifier with HF `ViTForImageClassification` checkpoint paths.

Parameters mirror the HF checkpoint names (the layout `save_pretrained` writes and the hub uses):
  vit.embeddings.{cls_token [1, 1, d], position_embeddings [1, N+1, d]}
  vit.embeddings.patch_embeddings.projection.{kernel [C·p·p, d], bias [d]}
  vit.encoder.layer.{i}.layernorm_before.{scale, bias}
  vit.encoder.layer.{i}.attention.attention.{query,key,value}.{kernel [d, d], bias [d]}
  vit.encoder.layer.{i}.attention.output.dense.{kernel, bias}
  vit.encoder.layer.{i}.layernorm_after.{scale, bias}
  vit.encoder.layer.{i}.intermediate.dense.{kernel [d, f], bias [f]}   (fc1)
  vit.encoder.layer.{i}.output.dense.{kernel [f, d], bias [d]}         (fc2)
  vit.layernorm.{scale, bias};  classifier.{kernel [d, classes], bias [classes]}
Every linear layer of the blocks is a `models.layers.Linear` with a bias (it sows its input into
`linear_inputs` and adds the `perturbations` entry to its output after the bias, so curvature code
reads ∂L/∂output as for the decoders). Images are channels-last [B, H, W, C] (or [B, H, W] grey).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import axes
from models.layers import Linear
from models.partitioning import constrain
from models.vit_config import ViTConfig

_ACT = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)


class LayerNorm(nn.Module):
    """(x − mean) / sqrt(var + eps) · scale + bias over the last axis, in float32 (torch's)."""

    eps: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., d] -> [..., d]
        d = x.shape[-1]
        part = nn.with_logical_partitioning
        scale = self.param(
            "scale", part(nn.initializers.ones, (axes.NORM,)), (d,), self.param_dtype
        )
        bias = self.param("bias", part(nn.initializers.zeros, (axes.NORM,)), (d,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)·(W/p), C·p·p], patches row-major, pixels ordered (c, i, j) like
    the flattened weight of HF's Conv2d patch projection."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class _Holder(nn.Module):
    """One biased `Linear` named `dense` (HF's ViTIntermediate / ViTOutput / ViTSelfOutput)."""

    features: int
    kernel_axes: tuple[str | None, str | None]
    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        return Linear(
            self.features,
            self.kernel_axes,
            use_bias=True,
            dtype=c.compute_dtype,
            param_dtype=c.storage_dtype,
            name="dense",
        )(x)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention scores and values (HF's ViTSelfAttention)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, S, d] -> [B, S, d] (before o-proj)
        c = self.config
        b, s, d = x.shape
        kw = dict(use_bias=c.qkv_bias, dtype=c.compute_dtype, param_dtype=c.storage_dtype)
        heads = (axes.EMBED, axes.Q_HEADS)
        q = Linear(d, heads, name="query", **kw)(x).reshape(b, s, c.num_heads, c.head_dim)
        k = Linear(d, heads, name="key", **kw)(x).reshape(b, s, c.num_heads, c.head_dim)
        v = Linear(d, heads, name="value", **kw)(x).reshape(b, s, c.num_heads, c.head_dim)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores * c.head_dim**-0.5, axis=-1).astype(c.compute_dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, d)
        return constrain(out, (axes.ACT_BATCH, axes.ACT_LENGTH, None))


class Attention(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        h = SelfAttention(c, name="attention")(x)
        return _Holder(c.hidden_size, (axes.Q_HEADS, axes.EMBED), c, name="output")(h)


def _activation(name: str):
    """HF "gelu" is the exact erf GELU; "gelu_new"/"gelu_pytorch_tanh" the tanh approximation."""
    return functools.partial(jax.nn.gelu, approximate=name != "gelu")


class Block(nn.Module):
    """Pre-norm transformer block (HF's ViTLayer)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, S, d] -> [B, S, d]
        c = self.config
        kw = dict(dtype=c.compute_dtype, param_dtype=c.storage_dtype)
        x = x + Attention(c, name="attention")(
            LayerNorm(c.layer_norm_eps, name="layernorm_before", **kw)(x)
        )
        h = LayerNorm(c.layer_norm_eps, name="layernorm_after", **kw)(x)
        h = _Holder(c.intermediate_size, (axes.EMBED, axes.MLP), c, name="intermediate")(h)
        h = constrain(_activation(c.hidden_act)(h), (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
        return x + _Holder(c.hidden_size, (axes.MLP, axes.EMBED), c, name="output")(h)


class Layers(nn.Module):
    """Unrolled blocks named "0".."L-1" (HF's `encoder.layer`), so each site has its own path."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.config.num_layers):
            x = constrain(Block(self.config, name=str(i))(x), _ACT)
        return x


class Encoder(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return Layers(self.config, name="layer")(x)


class Embeddings(nn.Module):
    """Patch projection + CLS token + learned position embeddings: [B, H, W, C] -> [B, N+1, d]."""

    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        part = nn.with_logical_partitioning
        init = nn.initializers.truncated_normal(0.02)
        cls = self.param(
            "cls_token",
            part(init, (None, None, axes.EMBED)),
            (1, 1, c.hidden_size),
            c.storage_dtype,
        )
        pos = self.param(
            "position_embeddings",
            part(init, (None, None, axes.EMBED)),
            (1, c.seq_len, c.hidden_size),
            c.storage_dtype,
        )
        patches = patchify(images.astype(c.compute_dtype), c.patch_size)
        x = _PatchEmbeddings(c, name="patch_embeddings")(patches)
        cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, c.hidden_size))
        return jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)


class _PatchEmbeddings(nn.Module):
    """The Conv2d patch projection as a dense map on flattened patches (no input capture)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:  # [B, N, C·p·p] -> [B, N, d]
        c = self.config
        return nn.Dense(
            c.hidden_size,
            dtype=c.compute_dtype,
            param_dtype=c.storage_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (axes.PATCH, axes.EMBED)
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)),
            name="projection",
        )(patches)


class ViTModel(nn.Module):
    """Backbone: embeddings, blocks, final LayerNorm. Returns hidden states [B, N+1, d]."""

    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        x = constrain(Embeddings(c, name="embeddings")(images), _ACT)
        x = Encoder(c, name="encoder")(x)
        return LayerNorm(c.layer_norm_eps, c.compute_dtype, c.storage_dtype, name="layernorm")(x)


class ViTClassifier(nn.Module):
    """`ViTForImageClassification`: logits [B, classes] from the CLS position, or (with
    `return_hidden`) the final-norm hidden states [B, N+1, d] of every position."""

    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array, return_hidden: bool = False) -> jax.Array:
        c = self.config
        if images.ndim == 3:
            images = images[..., None]
        expected = (c.image_size, c.image_size, c.num_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"`images` must be [batch, {c.image_size}, {c.image_size}, {c.num_channels}] "
                f"(channels last; [batch, H, W] for grey), got shape {tuple(images.shape)}."
            )
        hidden = ViTModel(c, name="vit")(images)
        if return_hidden:
            return hidden
        part = nn.with_logical_partitioning
        return nn.Dense(
            c.num_classes,
            dtype=c.compute_dtype,
            param_dtype=c.storage_dtype,
            kernel_init=part(nn.initializers.normal(0.02), (axes.EMBED, axes.CLASSES)),
            bias_init=part(nn.initializers.zeros, (axes.CLASSES,)),
            name="classifier",
        )(hidden[:, 0])
