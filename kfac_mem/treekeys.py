"""Flat {HF id: value} dicts <-> nested trees split on '.', the layout used for Orbax keys.

Both directions are `flax.traverse_util`'s (sep='.'); `nest` first refuses ids that would collide
(one id a dotted prefix of another, e.g. `a.b` and `a.b.c`), which would otherwise lose a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import traverse_util


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    keys = set(flat)
    for key in flat:
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in keys:
                raise ValueError(f"Key `{key}` collides with another key in the same tree.")
    return traverse_util.unflatten_dict(dict(flat), sep=".")


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(_plain(tree), sep=".")


def _plain(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested Mappings as dicts with str keys (flatten_dict recurses into dicts only)."""
    return {str(k): _plain(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
