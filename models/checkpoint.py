"""Orbax checkpoints of a model: `params/` (Orbax, sharded) + `model_config.json` (+ tokenizer.json).

Both model families use this format: decoders (`LanguageModel`, format `flax-decoder-v1`) and ViT
classifiers (`VisionModel`, format `flax-vit-v1`); `load_model_checkpoint` returns the right one.

`model_config.json` is written last, so a directory without it is an incomplete save and is refused.
Restores go straight into the target shardings (any mesh, any device count).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from models import language_model, vision_model
from models.config import DecoderConfig
from models.language_model import LanguageModel, Params
from models.partitioning import Rules
from models.vision_model import VisionModel
from models.vit_config import ViTConfig

MODEL_CONFIG = "model_config.json"
FORMAT = "flax-decoder-v1"
VIT_FORMAT = "flax-vit-v1"
# format -> (config class, model class, module with abstract_params / param_shardings)
FAMILIES = {
    FORMAT: (DecoderConfig, LanguageModel, language_model),
    VIT_FORMAT: (ViTConfig, VisionModel, vision_model),
}


def is_model_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_CONFIG))


def save_model(
    model: LanguageModel | VisionModel,
    directory: str,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Save `model` under `directory` (created). Refuses to overwrite unless `overwrite`."""
    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, MODEL_CONFIG)) and not overwrite:
        raise FileExistsError(
            f"{directory} already holds a model checkpoint; pass overwrite=True or "
            f"choose another output directory."
        )
    os.makedirs(directory, exist_ok=True)
    if jax.process_index() == 0 and os.path.exists(os.path.join(directory, MODEL_CONFIG)):
        os.remove(os.path.join(directory, MODEL_CONFIG))  # mark incomplete while rewriting
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, "params"), model.params, force=True)
        ckptr.wait_until_finished()
    fingerprint = model.fingerprint()  # a collective over sharded params: every process calls it
    if jax.process_index() == 0:
        if getattr(model, "tokenizer", None) is not None:
            model.tokenizer.save(os.path.join(directory, "tokenizer.json"))
        info = {
            "format": VIT_FORMAT if isinstance(model, VisionModel) else FORMAT,
            "config": model.config.to_dict(),
            "source": model.source,
            "fingerprint": fingerprint,
            "metadata": metadata or {},
        }
        tmp = os.path.join(directory, MODEL_CONFIG + ".tmp")
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, os.path.join(directory, MODEL_CONFIG))
    if jax.process_count() > 1:  # the others may read model_config.json next
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"models.save_model:{directory}")
    return directory


def read_model_info(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, MODEL_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory}: no {MODEL_CONFIG}; not a (complete) model checkpoint."
        )
    with open(path) as f:
        info = json.load(f)
    if info.get("format") not in FAMILIES:
        raise ValueError(
            f"{path}: unknown checkpoint format {info.get('format')!r} (expected one of "
            f"{sorted(FAMILIES)})."
        )
    return info


def restore_params(
    directory: str, config: DecoderConfig | ViTConfig, mesh=None, rules: Rules | None = None
) -> Params:
    family = language_model if isinstance(config, DecoderConfig) else vision_model
    shapes, _ = family.abstract_params(config)
    shardings = family.param_shardings(config, mesh, rules)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: device, shapes)
    target = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, config.storage_dtype, sharding=sh),
        shapes,
        shardings,
    )
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.join(os.path.abspath(directory), "params"), target)


def load_model_checkpoint(
    directory: str, mesh=None, rules: Rules | None = None, **config_overrides: Any
) -> LanguageModel | VisionModel:
    info = read_model_info(directory)
    config_cls, model_cls, _ = FAMILIES[info["format"]]
    config = config_cls.from_dict(info["config"]).replace(**config_overrides)
    source = os.path.abspath(directory)
    if model_cls is VisionModel:
        return VisionModel(
            config, restore_params(directory, config, mesh, rules), mesh, rules, source
        )
    tokenizer = None
    tok_path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(tok_path):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(tok_path)
    params = restore_params(directory, config, mesh, rules)
    return LanguageModel(config, params, tokenizer, mesh, rules, source=source)
