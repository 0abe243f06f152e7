"""Place checkpoint tensors straight onto their mesh shardings, one tensor (and shard) at a time.

A `TensorSource` maps HF tensor names to lazily readable arrays in HF layout (W [d_out, d_in]).
`place_params` walks the model's abstract parameter tree, reads each device's slice from the source
(transposing kernels) and assembles a global `jax.Array` with `make_array_from_callback`, so no full
host copy of the model is ever built.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from models.config import DecoderConfig
from models.language_model import Params, abstract_params
from models.partitioning import Rules, logical_to_sharding

# Buffers some checkpoints carry that are recomputed here.
IGNORED_TENSORS = ("rotary_emb.inv_freq",)


class TensorSource:
    """name -> array-like in HF layout; `where(name)` says which file holds it (for errors)."""

    def __init__(
        self, getters: dict[str, Callable[[], np.ndarray]], where: dict[str, str], origin: str
    ):
        self._getters = getters
        self._where = where
        self.origin = origin

    def names(self) -> list[str]:
        return list(self._getters)

    def get(self, name: str) -> np.ndarray:
        return self._getters[name]()

    def where(self, name: str) -> str:
        return self._where.get(name, self.origin)


def hf_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """Our param path -> (HF tensor name, whether the HF tensor is the transpose)."""
    leaf = path[-1]
    if leaf not in ("kernel", "scale", "embedding"):
        raise ValueError(f"No HF name for parameter leaf `{leaf}` at {'.'.join(path)}.")
    return ".".join(path[:-1]) + ".weight", leaf == "kernel"


def place_params(
    config: DecoderConfig,
    source: TensorSource,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> Params:
    shapes, logical = abstract_params(config)
    available = set(source.names())
    used: set[str] = set()
    dtype = config.storage_dtype
    device = SingleDeviceSharding(jax.devices()[0])

    def load(path, sds, axes):
        path = tuple(k.key for k in path)
        name, transposed = hf_name(path)
        if name not in available:
            raise ValueError(
                f"{source.origin}: tensor `{name}` is missing (needed for parameter "
                f"{'/'.join(path)} of shape {sds.shape}). The checkpoint does not match its config; "
                f"check that config.json belongs to these weights."
            )
        used.add(name)
        tensor = source.get(name)
        expected = tuple(reversed(sds.shape)) if transposed else tuple(sds.shape)
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{source.where(name)}: tensor `{name}` has shape {tuple(tensor.shape)} but the config "
                f"implies {expected}. Fix config.json (hidden_size, intermediate_size, heads, "
                f"head_dim, vocab_size) or use the weights it describes."
            )
        sharding = (
            device
            if mesh is None
            else logical_to_sharding(axes, sds.shape, mesh, rules or (), name)
        )

        def shard(index):
            block = tensor[tuple(reversed(index))].T if transposed else tensor[index]
            return np.asarray(block, dtype=dtype)

        return jax.make_array_from_callback(sds.shape, sharding, shard)

    params = jax.tree_util.tree_map_with_path(
        lambda p, s, a: load(p, s, a),
        shapes,
        logical,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )
    leftover = sorted(
        n
        for n in available - used
        if not n.endswith(IGNORED_TENSORS)
        and not (config.tie_word_embeddings and n == "lm_head.weight")
    )
    if leftover:
        raise ValueError(
            f"{source.origin}: {len(leftover)} tensors are not used by the {config.family} model, "
            f"e.g. {leftover[:5]}. The checkpoint has parts this implementation does not support "
            f"(biases, extra norms?); refusing to silently drop them."
        )
    return params
