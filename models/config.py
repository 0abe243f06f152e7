"""Decoder configurations and named presets (model dimensions live here, in code)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

Family = Literal["olmo2", "llama"]
FAMILIES: tuple[str, ...] = ("olmo2", "llama")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Dimensions and numerics of an OLMo-2 or Llama-family decoder.

    `family` selects the block: "olmo2" normalizes sublayer *outputs* (post-norm inside the residual
    branch) and applies RMSNorm to the full q/k projections; "llama" normalizes sublayer *inputs*.
    `dtype` is the activation/compute dtype, `param_dtype` the storage dtype of parameters.
    """

    family: Family
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    dtype: str = "float32"
    param_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"`family` must be one of {FAMILIES}, got {self.family!r}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"`num_heads` ({self.num_heads}) must be a multiple of `num_kv_heads` "
                f"({self.num_kv_heads}) for grouped-query attention."
            )
        if self.head_dim % 2:
            raise ValueError(f"`head_dim` must be even for RoPE, got {self.head_dim}.")
        for name in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, name))  # raises on an unknown dtype name

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> DecoderConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(
                f"Unknown DecoderConfig fields {unknown}; known fields: {sorted(fields)}."
            )
        return cls(**d)

    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
        if self.family == "olmo2":
            per_layer += q + kv
        head = 0 if self.tie_word_embeddings else d * v
        return v * d + self.num_layers * per_layer + d + head


def olmo2_1b() -> DecoderConfig:
    """allenai/OLMo-2-0425-1B."""
    return DecoderConfig(
        "olmo2",
        100352,
        2048,
        8192,
        16,
        16,
        16,
        128,
        500000.0,
        1e-6,
        max_position_embeddings=4096,
        eos_token_id=100257,
        pad_token_id=100277,
    )


def olmo2_7b() -> DecoderConfig:
    """allenai/OLMo-2-1124-7B."""
    return DecoderConfig(
        "olmo2",
        100352,
        4096,
        11008,
        32,
        32,
        32,
        128,
        500000.0,
        1e-6,
        max_position_embeddings=4096,
        eos_token_id=100257,
        pad_token_id=100277,
    )


def smollm2_135m() -> DecoderConfig:
    """HuggingFaceTB/SmolLM2-135M(-Instruct): Llama architecture, GQA 9/3, tied embeddings."""
    return DecoderConfig(
        "llama",
        49152,
        576,
        1536,
        30,
        9,
        3,
        64,
        100000.0,
        1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
    )


def tiny_olmo2() -> DecoderConfig:
    """A few-kB OLMo-2 for tests (GQA 4/2)."""
    return DecoderConfig("olmo2", 256, 64, 128, 2, 4, 2, 16, 10000.0, 1e-6)


def tiny_llama() -> DecoderConfig:
    """A few-kB Llama for tests (GQA 4/2, tied embeddings)."""
    return DecoderConfig(
        "llama", 256, 64, 128, 2, 4, 2, 16, 100000.0, 1e-5, tie_word_embeddings=True
    )


def demo_olmo2() -> DecoderConfig:
    """The `kfac-mem demo` model: 4 layers, d=256, SwiGLU 768, 4 heads, BPE 2048."""
    return DecoderConfig(
        "olmo2", 2048, 256, 768, 4, 4, 4, 64, 10000.0, 1e-6, max_position_embeddings=512
    )


PRESETS = {
    "olmo2-1b": olmo2_1b,
    "olmo2-7b": olmo2_7b,
    "smollm2-135m": smollm2_135m,
    "tiny-olmo2": tiny_olmo2,
    "tiny-llama": tiny_llama,
    "demo-olmo2": demo_olmo2,
}


def get_config(name: str) -> DecoderConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(
            f"Unknown preset {name!r}; available presets: {sorted(PRESETS)}."
        ) from None
