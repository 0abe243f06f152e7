"""Input checks shared by every entry point, run before any work or any write.

One check per property, so collect, mine, evaluate and analyze refuse the same inputs with the
same message: token ids in [0, vocab_size) (checked on the stored dtype, before any cast),
window length within the model's positions, `.npy` files that load, and finite arrays; and
`check_fields`, the range and choice checks of every config dataclass's `__post_init__` (errors
name the field).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kfac_mem.errors import InputError, NonFiniteError

__all__ = [
    "check_fields",
    "check_finite_arrays",
    "check_finite_tree",
    "check_token_ids",
    "check_window_length",
    "load_npy",
]

_ROWS = 1 << 14  # rows per chunk when scanning a (memory-mapped) token array


def load_npy(path: str, mmap: bool = False) -> np.ndarray:
    """`np.load(path)` (no pickles) with a one-line error naming the file when it cannot be read."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file.") from None
    except (EOFError, ValueError, OSError) as e:
        raise InputError(
            f"{path}: not a readable .npy array ({type(e).__name__}: {e}); save token windows "
            f"with np.save(path, ids.reshape(n, length))."
        ) from None


def check_token_ids(tokens: Any, vocab_size: int | None, where: str) -> None:
    """Raise InputError unless `tokens` is an integer array with every id in [0, vocab_size).

    Args:
      tokens: token ids, any shape (a [N, L] array, possibly memory-mapped, or a list).
      vocab_size: the model's vocabulary size (None: only negative ids are refused).
      where: what the message calls the input (a file, a jsonl line and field, a set name).
    """
    arr = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
    if arr.size == 0:
        return
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{where}: token ids must be integers, got dtype {arr.dtype}.")
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
    hi = np.iinfo(np.int64).max if vocab_size is None else int(vocab_size)
    for start in range(0, flat.shape[0], _ROWS):
        block = np.asarray(flat[start : start + _ROWS])
        bad = (block < 0) | (block >= hi)
        if bad.any():
            r, c = (int(x[0]) for x in np.nonzero(bad))
            span = f"[0, {vocab_size})" if vocab_size is not None else "[0, ∞)"
            where_in = f" (row {start + r}, position {c})" if arr.ndim > 1 else f" (index {c})"
            raise InputError(
                f"{where} has token id {int(block[r, c])} outside the model's vocabulary "
                f"{span}{where_in}; was it tokenized for another model?"
            )


def check_window_length(length: int, max_positions: int | None, where: str) -> None:
    """Raise InputError if a window of `length` tokens exceeds the model's `max_positions`."""
    if max_positions is not None and int(length) > int(max_positions):
        raise InputError(
            f"{where}: windows of {int(length)} tokens exceed the model's maximum of "
            f"{int(max_positions)} positions; use shorter windows."
        )


def check_finite_arrays(arrays: Mapping[str, Any], artifact: str) -> None:
    """Raise NonFiniteError naming every array (layer) of `artifact` holding a NaN or Inf.

    Args:
      arrays: name (layer id, factor key) -> array (numpy or jax).
      artifact: what holds them (a path, "the edited weights", ...).
    """
    bad = [name for name, a in arrays.items() if not bool(np.isfinite(np.asarray(a)).all())]
    if bad:
        shown = ", ".join(bad[:6]) + (f", ... ({len(bad)} in all)" if len(bad) > 6 else "")
        raise NonFiniteError(
            f"Non-finite (NaN/Inf) values in {artifact}: {shown}. Nothing was written."
        )


def check_finite_tree(params: Any, artifact: str) -> None:
    """Raise NonFiniteError naming every leaf (parameter path) of `params` holding a NaN or Inf.

    Checked on device, in one compiled reduction over the whole (possibly sharded) tree; each
    flag is read from a local shard, so this also works in multi-host runs.
    """
    leaves = {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    }
    flags = _all_finite(leaves)
    check_finite_arrays(
        {k: 0.0 if bool(v.addressable_data(0)) else float("nan") for k, v in flags.items()},
        artifact,
    )


@jax.jit
def _all_finite(tree):
    return jax.tree.map(lambda x: jnp.isfinite(x).all(), tree)


def check_fields(
    config: Any,
    *,
    at_least_one: Iterable[str] = (),
    positive: Iterable[str] = (),
    non_negative: Iterable[str] = (),
    fractions: Iterable[str] = (),
    rhos: Iterable[str] = (),
    drops: Iterable[str] = (),
    choices: Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """Raise ValueError naming the first field of `config` out of its range.

    at_least_one: integers >= 1 (None allowed: "no limit"); positive: numbers > 0; non_negative:
    numbers >= 0; fractions: numbers in [0, 1]; rhos: sequences of ρ in (0, 1]; drops: sequences
    of drop fractions in [0, 1); choices: field -> its allowed values.
    """

    def value(name):
        return getattr(config, name)

    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    for name in at_least_one:
        v = value(name)
        if v is not None and not (number(v) and int(v) == v and v >= 1):
            raise ValueError(f"`{name}` must be an integer >= 1, got {v!r}.")
    for name in positive:
        if not (number(value(name)) and value(name) > 0):
            raise ValueError(f"`{name}` must be > 0, got {value(name)!r}.")
    for name in non_negative:
        if not (number(value(name)) and value(name) >= 0):
            raise ValueError(f"`{name}` must be >= 0, got {value(name)!r}.")
    for name in fractions:
        if not (number(value(name)) and 0 <= value(name) <= 1):
            raise ValueError(f"`{name}` must be in [0, 1], got {value(name)!r}.")
    for name in rhos:
        for v in value(name):
            if not (number(v) and 0 < v <= 1):
                raise ValueError(f"`{name}` values must lie in (0, 1], got {v!r}.")
    for name in drops:
        for v in value(name):
            if not (number(v) and 0 <= v < 1):
                raise ValueError(f"`{name}` values must lie in [0, 1), got {v!r}.")
    for name, allowed in (choices or {}).items():
        if value(name) not in allowed:
            raise ValueError(f"`{name}` must be one of {tuple(allowed)}, got {value(name)!r}.")
