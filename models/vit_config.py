"""Vision Transformer (ViT) configurations and named presets, from a test toy to ViT-B/16.

The architecture is HF's `ViTForImageClassification`: non-overlapping square patches embedded by a
linear map, a learned CLS token and learned position embeddings, pre-norm blocks (LayerNorm →
multi-head attention with biased q/k/v/o → residual; LayerNorm → fc1 → GELU → fc2 → residual), a
final LayerNorm and a linear classifier on the CLS position.

Each preset is a classmethod of `ViTConfig` that spells every value by keyword
(`ViTConfig.vit_digits()`); `models.presets.PRESETS` registers them by name beside the decoders.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# HF `hidden_act` values implemented here (exact erf GELU, or its tanh approximation).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh")

FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Dimensions and numerics of a ViT classifier.

    Images are `image_size`×`image_size` with `num_channels` channels, cut into
    (`image_size` / `patch_size`)² patches; the sequence is CLS + patches. `dtype` is the
    compute dtype, `param_dtype` the storage dtype. `label_names` (optional, one per class) is
    written to an exported config's `id2label`.
    """

    image_size: int
    patch_size: int
    num_channels: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    num_classes: int
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    label_names: tuple[str, ...] = ()

    def __post_init__(self):
        for name in (
            "image_size",
            "patch_size",
            "num_channels",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "num_classes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` "
                f"({self.patch_size}); pick a patch size that tiles the image."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_heads` "
                f"({self.num_heads})."
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"`hidden_act` must be one of {ACTIVATIONS}, got {self.hidden_act!r}.")
        if self.label_names and len(self.label_names) != self.num_classes:
            raise ValueError(
                f"`label_names` has {len(self.label_names)} names but `num_classes` is "
                f"{self.num_classes}; give one name per class or none."
            )
        object.__setattr__(self, "label_names", tuple(self.label_names))
        for name in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, name))  # raises on an unknown dtype name

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def seq_len(self) -> int:
        """CLS + patches."""
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Pixels per patch, C·p·p (the patch-embedding kernel's input width)."""
        return self.num_channels * self.patch_size**2

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["label_names"] = list(self.label_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"Unknown ViTConfig fields {unknown}; known fields: {sorted(fields)}.")
        d = dict(d)
        d["label_names"] = tuple(d.get("label_names", ()))
        return cls(**d)

    def num_params(self) -> int:
        d, f = self.hidden_size, self.intermediate_size
        per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
        embed = self.patch_dim * d + d + d + self.seq_len * d
        return embed + self.num_layers * per_layer + 2 * d + d * self.num_classes + self.num_classes

    # --- named presets ---------------------------------------------------------------------------

    @classmethod
    def vit_tiny_test(cls) -> ViTConfig:
        """A few-kB ViT for tests: 8×8 grey images, patch 2, d 32, 2 layers, 4 heads."""
        return cls(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=64,
            num_classes=10,
        )

    @classmethod
    def vit_digits(cls) -> ViTConfig:
        """scikit-learn's 8×8 digits: patch 4 (4 patches + CLS), d 64, 4 layers, 4 heads, MLP 256.

        Patch 4 rather than 2: 5 tokens instead of 17 make an epoch ~5× cheaper on CPU, and with
        `kfac_mem.vision.train.DIGITS_NOISY_RECIPE` the model memorizes most of 10% noisy labels
        in well under a minute of CPU time while validation accuracy stays above 90%.
        """
        return cls(
            image_size=8,
            patch_size=4,
            num_channels=1,
            hidden_size=64,
            num_layers=4,
            num_heads=4,
            intermediate_size=256,
            num_classes=10,
            label_names=tuple(str(i) for i in range(10)),
        )

    @classmethod
    def vit_fashion_mnist(cls) -> ViTConfig:
        """Fashion-MNIST 28×28: patch 7 (16 patches + CLS), d 64, 4 layers, 4 heads, MLP 256.

        Sized for CPU: ~3 s per epoch of 5k images on 2 cores (patch 4 with d 128 and 6 layers
        takes ~35× longer); 80 epochs at lr 2e-3 on 5k images with 10% noisy labels memorize 85%
        of them at 75% validation accuracy. Scale it up (`hidden_size`, `num_layers`,
        `patch_size=4`) on an accelerator.
        """
        return cls(
            image_size=28,
            patch_size=7,
            num_channels=1,
            hidden_size=64,
            num_layers=4,
            num_heads=4,
            intermediate_size=256,
            num_classes=10,
            label_names=FASHION_MNIST_LABELS,
        )

    @classmethod
    def vit_b16(cls) -> ViTConfig:
        """ViT-Base/16 at 224 px (google/vit-base-patch16-224 shapes): d 768, 12 layers, 1000
        classes."""
        return cls(
            image_size=224,
            patch_size=16,
            num_channels=3,
            hidden_size=768,
            num_layers=12,
            num_heads=12,
            intermediate_size=3072,
            num_classes=1000,
        )
