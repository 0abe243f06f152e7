"""HF checkpoint directories: config.json <-> DecoderConfig, safetensors -> params, params -> HF.

Only attributes that this implementation reproduces are accepted; anything that would change the
forward pass (biases, rope scaling, sliding windows, another activation) is refused by name.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from models.config import DecoderConfig
from models.placement import TensorSource, hf_name
from models.safetensors_io import SafetensorsFile, write_safetensors

MODEL_TYPES = {"olmo2": ("olmo2", "Olmo2ForCausalLM"), "llama": ("llama", "LlamaForCausalLM")}

_HANDLED = {
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "rope_parameters",
    "rms_norm_eps",
    "tie_word_embeddings",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
}
# Attributes accepted only with these values (anything else changes the forward pass).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "hidden_act": ("silu",),
    "attention_bias": (False,),
    "mlp_bias": (False,),
    "rope_scaling": (None,),
    "sliding_window": (None,),
    "use_sliding_window": (False,),
    "attention_dropout": (0, 0.0),
    "residual_dropout": (0, 0.0),
    "embedding_dropout": (0, 0.0),
    "qk_layernorm": (None, True),
}
# Attributes with no effect on the forward pass.
_IGNORED = {
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "initializer_range",
    "_name_or_path",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "id2label",
    "label2id",
    "problem_type",
    "pretraining_tp",
    "tokenizer_class",
    "auto_map",
    "clip_qkv",
    "torchscript",
    "_attn_implementation",
}


def config_from_hf(
    hf: dict[str, Any], origin: str = "config.json", **overrides: Any
) -> DecoderConfig:
    """Translate an HF config dict; raise naming any attribute this implementation cannot honour."""
    model_type = hf.get("model_type")
    family = {"olmo2": "olmo2", "llama": "llama"}.get(model_type)
    if family is None:
        raise ValueError(
            f"{origin}: model_type {model_type!r} is not supported; supported: 'olmo2' "
            f"(Olmo2ForCausalLM) and 'llama' (LlamaForCausalLM, e.g. SmolLM2)."
        )
    problems = []
    for key, value in hf.items():
        if key in _HANDLED or key in _IGNORED:
            continue
        if key in _NEUTRAL:
            if value not in _NEUTRAL[key]:
                problems.append(f"{key}={value!r} (supported: {_NEUTRAL[key]})")
        elif value is not None:
            problems.append(f"{key}={value!r} (unknown attribute)")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_parameters.rope_type={rope['rope_type']!r} (supported: 'default')")
    if problems:
        raise ValueError(
            f"{origin}: unsupported config attributes for the {family} decoder: "
            + "; ".join(problems)
            + ". They would change the forward pass, so the checkpoint cannot be loaded faithfully."
        )
    heads = hf["num_attention_heads"]
    return DecoderConfig(
        family=family,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        bos_token_id=_single(hf.get("bos_token_id")),
        eos_token_id=_single(hf.get("eos_token_id")),
        pad_token_id=_single(hf.get("pad_token_id")),
        **overrides,
    )


def _single(token_id):
    return token_id[0] if isinstance(token_id, list) and token_id else token_id


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
    model_type, arch = MODEL_TYPES[config.family]
    out = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": config.param_dtype,
    }
    if config.family == "llama":
        out["mlp_bias"] = False
    return out


def read_hf_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory}: no config.json. An HF checkpoint directory needs config.json plus "
            f"model.safetensors (or model.safetensors.index.json with its shards)."
        )
    with open(path) as f:
        return json.load(f)


def hf_tensor_source(directory: str) -> TensorSource:
    """All tensors of a (possibly sharded) safetensors checkpoint directory, read lazily."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(
                f"{directory}: no *.safetensors files. Convert .bin checkpoints with transformers "
                f"(`model.save_pretrained(dir, safe_serialization=True)`) first."
            )
    getters, where = {}, {}
    for fname in files:
        path = os.path.join(directory, fname)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{index}: lists shard {fname}, which is missing from {directory}. Copy or "
                f"re-download that shard (an interrupted download?) so every listed file is present."
            )
        st = SafetensorsFile(path)
        for name in st.names:
            getters[name] = lambda st=st, name=name: st.array(name)
            where[name] = path
    return TensorSource(getters, where, directory)


def export_hf(
    config: DecoderConfig, params, directory: str, tokenizer=None, dtype: str | None = None
) -> str:
    """Write an HF checkpoint directory (config.json, model.safetensors[, tokenizer.json]).

    `dtype` (e.g. "bfloat16") defaults to the parameters' own dtype. Only process 0 writes.
    """
    os.makedirs(directory, exist_ok=True)
    target = np.dtype(jax.numpy.dtype(dtype or config.param_dtype))
    tensors = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name, transposed = hf_name(tuple(k.key for k in path))
        value = np.asarray(_to_host(leaf))
        tensors[name] = (value.T if transposed else value).astype(target)
    if jax.process_index() != 0:
        return directory
    hf_config = config_to_hf(config)
    hf_config["torch_dtype"] = str(target) if dtype else hf_config["torch_dtype"]
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors, {"format": "pt"})
    _write_json(os.path.join(directory, "config.json"), hf_config)
    if tokenizer is not None:
        tokenizer.save(os.path.join(directory, "tokenizer.json"))
    return directory


def _to_host(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(x, tiled=True)
    return jax.device_get(x)


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
