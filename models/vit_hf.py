"""HF `ViTForImageClassification` checkpoint directories <-> `VisionModel`.

Tensor names are the HF checkpoint names (`vit.encoder.layer.{i}.intermediate.dense.weight`, ...),
which are also this implementation's parameter paths. Linear weights are stored transposed
(W [d_out, d_in] = kernelᵀ); the Conv2d patch projection [d, C, p, p] is the kernel [C·p·p, d]
transposed and reshaped. Config attributes that would change the forward pass and are not
implemented are refused by name.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from models.hf import hf_tensor_source, read_hf_config
from models.partitioning import Rules, logical_to_sharding
from models.safetensors_io import write_safetensors
from models.vision_model import VisionModel, abstract_params
from models.vit_config import ACTIVATIONS, ViTConfig

ARCHITECTURE = "ViTForImageClassification"
PATCH_KERNEL = ("vit", "embeddings", "patch_embeddings", "projection", "kernel")

_HANDLED = {
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "id2label",
    "label2id",
    "num_labels",
    "architectures",
    "head_dim",
}
# No effect on the classifier's inference forward: bookkeeping, init, dropout (off at inference;
# training here uses none), and heads that ViTForImageClassification does not build.
_IGNORED = {
    "transformers_version",
    "torch_dtype",
    "dtype",
    "initializer_range",
    "_name_or_path",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "problem_type",
    "use_cache",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "encoder_stride",
    "pooler_output_size",
    "pooler_act",
    "torchscript",
    "_attn_implementation",
    "tie_word_embeddings",
}


def _square(value: Any, key: str, origin: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(
                f"{origin}: {key}={value!r} is not square; only square images and "
                f"patches are supported."
            )
        value = value[0]
    return int(value)


def config_from_hf(hf: dict[str, Any], origin: str = "config.json", **overrides: Any) -> ViTConfig:
    """Translate an HF ViT config dict; raise naming any attribute this implementation cannot
    honour (another model type or head, another activation, a head_dim ≠ d / heads, ...)."""
    if hf.get("model_type") != "vit":
        raise ValueError(
            f"{origin}: model_type {hf.get('model_type')!r} is not supported here; "
            f"expected 'vit' ({ARCHITECTURE})."
        )
    problems = []
    arch = hf.get("architectures")
    if arch and ARCHITECTURE not in arch:
        problems.append(f"architectures={arch!r} (supported: [{ARCHITECTURE!r}])")
    if hf.get("hidden_act", "gelu") not in ACTIVATIONS:
        problems.append(f"hidden_act={hf['hidden_act']!r} (supported: {ACTIVATIONS})")
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, d // heads):
        problems.append(
            f"head_dim={hf['head_dim']!r} (supported: hidden_size / num_attention_heads)"
        )
    for key, value in hf.items():
        if key not in _HANDLED and key not in _IGNORED and value is not None:
            problems.append(f"{key}={value!r} (unknown attribute)")
    if problems:
        raise ValueError(
            f"{origin}: unsupported config attributes for the ViT classifier: "
            + "; ".join(problems)
            + ". They would change the forward pass, so the "
            "checkpoint cannot be loaded faithfully."
        )
    id2label = hf.get("id2label") or {}
    num_classes = int(hf.get("num_labels") or len(id2label) or 2)
    names = tuple(
        str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num_classes)
    )
    kwargs = dict(
        image_size=_square(hf.get("image_size", 224), "image_size", origin),
        patch_size=_square(hf.get("patch_size", 16), "patch_size", origin),
        num_channels=int(hf.get("num_channels", 3)),
        hidden_size=d,
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        intermediate_size=hf["intermediate_size"],
        num_classes=num_classes,
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        hidden_act=hf.get("hidden_act", "gelu"),
        qkv_bias=bool(hf.get("qkv_bias", True)),
        label_names=() if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names,
    )
    kwargs.update(overrides)
    return ViTConfig(**kwargs)


def config_to_hf(config: ViTConfig) -> dict[str, Any]:
    names = config.label_names or tuple(f"LABEL_{i}" for i in range(config.num_classes))
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "vit",
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": config.hidden_act,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": config.layer_norm_eps,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "qkv_bias": config.qkv_bias,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
        "torch_dtype": config.param_dtype,
    }


def hf_tensor_name(path: tuple[str, ...]) -> str:
    """Our param path -> HF tensor name (kernel/scale -> weight; bias and embeddings as is)."""
    leaf = path[-1]
    if leaf in ("kernel", "scale"):
        return ".".join(path[:-1]) + ".weight"
    return ".".join(path)


def to_hf_layout(path: tuple[str, ...], value: np.ndarray, config: ViTConfig) -> np.ndarray:
    if path == PATCH_KERNEL:  # [C·p·p, d] -> Conv2d weight [d, C, p, p]
        p = config.patch_size
        return value.T.reshape(config.hidden_size, config.num_channels, p, p)
    return value.T if path[-1] == "kernel" else value


def from_hf_layout(path: tuple[str, ...], tensor: np.ndarray) -> np.ndarray:
    if path == PATCH_KERNEL:  # Conv2d weight [d, C, p, p] -> [C·p·p, d]
        return tensor.reshape(tensor.shape[0], -1).T
    return tensor.T if path[-1] == "kernel" else tensor


def load_vit_hf(
    directory: str, mesh: Mesh | None = None, rules: Rules | None = None, **overrides: Any
) -> VisionModel:
    """Load an HF ViTForImageClassification directory (config.json + *.safetensors) into a
    `VisionModel`, each tensor placed straight onto its sharding. Missing, mis-shaped or unused
    tensors are errors naming the tensor and file."""
    origin = os.path.join(directory, "config.json")
    config = config_from_hf(read_hf_config(directory), origin, **overrides)
    source = hf_tensor_source(directory)
    shapes, logical = abstract_params(config)
    available, used = set(source.names()), set()
    device = SingleDeviceSharding(jax.devices()[0])

    def load(key_path, sds, axes):
        path = tuple(k.key for k in key_path)
        name = hf_tensor_name(path)
        if name not in available:
            raise ValueError(
                f"{directory}: tensor `{name}` is missing (needed for parameter "
                f"{'/'.join(path)} of shape {sds.shape}); check that config.json "
                f"belongs to these weights."
            )
        used.add(name)
        tensor = np.asarray(source.get(name))
        expected = to_hf_layout(path, np.empty(sds.shape, np.bool_), config).shape
        if tuple(tensor.shape) != tuple(expected):
            raise ValueError(
                f"{source.where(name)}: tensor `{name}` has shape {tuple(tensor.shape)} "
                f"but config.json implies {tuple(expected)}; fix config.json."
            )
        value = np.asarray(from_hf_layout(path, tensor), dtype=config.storage_dtype)
        sharding = (
            device
            if mesh is None
            else logical_to_sharding(axes, sds.shape, mesh, rules or (), name)
        )
        return jax.device_put(value, sharding)

    params = jax.tree_util.tree_map_with_path(
        load, shapes, logical, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )
    leftover = sorted(available - used)
    if leftover:
        raise ValueError(
            f"{directory}: {len(leftover)} tensors are not used by {ARCHITECTURE}, e.g. "
            f"{leftover[:5]} (a pooler or mask token?); refusing to silently drop them."
        )
    return VisionModel(config, params, mesh, rules, source=os.path.abspath(directory))


def export_vit_hf(model: VisionModel, directory: str, dtype: str | None = None) -> str:
    """Write `model` as an HF checkpoint directory (config.json + model.safetensors) that
    `transformers.ViTForImageClassification.from_pretrained` loads. Only process 0 writes."""
    config = model.config
    target = np.dtype(jax.numpy.dtype(dtype or config.param_dtype))
    tensors = {}
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(model.params):
        path = tuple(k.key for k in key_path)
        value = np.asarray(_to_host(leaf))
        tensors[hf_tensor_name(path)] = np.ascontiguousarray(
            to_hf_layout(path, value, config)
        ).astype(target)
    if jax.process_index() != 0:
        return directory
    os.makedirs(directory, exist_ok=True)
    hf_config = config_to_hf(config)
    hf_config["torch_dtype"] = str(target)
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors, {"format": "pt"})
    tmp = os.path.join(directory, f"config.json.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(hf_config, f, indent=2)
    os.replace(tmp, os.path.join(directory, "config.json"))
    return directory


def _to_host(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(x, tiled=True)
    return jax.device_get(x)
