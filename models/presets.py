"""The one registry of model presets: name -> the config's named constructor.

Every preset spells its values by keyword in a classmethod of its config (`DecoderConfig.olmo2_7b`,
`ViTConfig.vit_digits`); `PRESETS` names them for `load_pretrained` (a preset name gives a randomly
initialized model, `smollm2-135m` the real SmolLM2 weights), `init_vision_model`, `kfac-mem plan`
and the demos. A new preset is one classmethod and one line here (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable

from models.config import DecoderConfig
from models.vit_config import ViTConfig

ModelConfig = DecoderConfig | ViTConfig

PRESETS: dict[str, Callable[[], ModelConfig]] = {
    # decoders (OLMo-2, Llama)
    "olmo2-1b": DecoderConfig.olmo2_1b,
    "olmo2-7b": DecoderConfig.olmo2_7b,
    "olmo2-13b": DecoderConfig.olmo2_13b,
    "olmo2-32b": DecoderConfig.olmo2_32b,
    "llama3-8b": DecoderConfig.llama3_8b,
    "smollm2-135m": DecoderConfig.smollm2_135m,
    "tiny-olmo2": DecoderConfig.tiny_olmo2,
    "tiny-llama": DecoderConfig.tiny_llama,
    "demo-olmo2": DecoderConfig.demo_olmo2,
    # ViT classifiers
    "vit-tiny-test": ViTConfig.vit_tiny_test,
    "vit-digits": ViTConfig.vit_digits,
    "vit-fashion-mnist": ViTConfig.vit_fashion_mnist,
    "vit-b16": ViTConfig.vit_b16,
}


def preset_config(name: str, kind: type | None = None) -> ModelConfig:
    """A new config of preset `name`; with `kind` (DecoderConfig or ViTConfig), only presets of
    that kind are accepted (the error lists them)."""
    known = sorted(n for n, make in PRESETS.items() if kind is None or _kind(make) is kind)
    if name not in known:
        what = "" if kind is None else f"{kind.__name__} "
        raise ValueError(f"Unknown {what}preset {name!r}; available presets: {known}.")
    return PRESETS[name]()


def _kind(make: Callable[[], ModelConfig]) -> type:
    return make.__self__  # the config class whose classmethod it is


def get_config(name: str) -> DecoderConfig:
    """The `DecoderConfig` of decoder preset `name`."""
    return preset_config(name, DecoderConfig)


def get_vit_config(name: str) -> ViTConfig:
    """The `ViTConfig` of ViT preset `name`."""
    return preset_config(name, ViTConfig)
