"""Linear sites: every `Linear` of a model addressed by its HF module path.

A site id is the HF module path (`model.layers.3.mlp.gate_proj`); its kernel lives at the same path
in the params tree with a trailing `kernel` leaf. Sites that read the same tensor share an
`input_group` (OLMo-2/Llama: q/k/v read one input, gate/up read one input), so curvature code can
compute one input second moment per group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from models.layers import CAPTURE, PERTURB

MLP_PROJECTIONS = ("gate", "up", "down")
ATTN_PROJECTIONS = ("q", "k", "v", "o")
PROJECTION_MODULE = {
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    # Vision (ViT) blocks.
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
}
_INPUT_GROUP = {
    "gate": "mlp.gate_proj+up_proj.input",
    "up": "mlp.gate_proj+up_proj.input",
    "down": "mlp.down_proj.input",
    "q": "self_attn.q_proj+k_proj+v_proj.input",
    "k": "self_attn.q_proj+k_proj+v_proj.input",
    "v": "self_attn.q_proj+k_proj+v_proj.input",
    "o": "self_attn.o_proj.input",
    "fc1": "mlp.fc1.input",
    "fc2": "mlp.fc2.input",
}


@dataclasses.dataclass(frozen=True)
class LinearSite:
    """One linear layer: y = x @ kernel with kernel [d_in, d_out] (HF weight W = kernelᵀ)."""

    id: str  # HF module path, e.g. "model.layers.3.mlp.gate_proj"
    layer: int
    projection: str  # gate | up | down | q | k | v | o | fc1 | fc2
    d_in: int
    d_out: int
    input_group: str  # id of the input shared with sibling sites

    @property
    def kernel_path(self) -> tuple[str, ...]:
        return (*self.id.split("."), "kernel")


def make_site(prefix: str, layer: int, projection: str, d_in: int, d_out: int) -> LinearSite:
    base = f"{prefix}.{layer}"
    return LinearSite(
        id=f"{base}.{PROJECTION_MODULE[projection]}",
        layer=layer,
        projection=projection,
        d_in=d_in,
        d_out=d_out,
        input_group=f"{base}.{_INPUT_GROUP[projection]}",
    )


def decoder_sites(config) -> list[LinearSite]:
    """All linear sites of an OLMo-2/Llama decoder (the head excluded), in forward order."""
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    dims = {
        "q": (d, q),
        "k": (d, kv),
        "v": (d, kv),
        "o": (q, d),
        "gate": (d, f),
        "up": (d, f),
        "down": (f, d),
    }
    return [
        make_site("model.layers", i, p, *dims[p])
        for i in range(config.num_layers)
        for p in ("q", "k", "v", "o", "gate", "up", "down")
    ]


def get_path(tree: Mapping[str, Any], path: Iterable[str]) -> Any:
    node = tree
    for key in path:
        node = node[key]
    return node


def set_path(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """Copy-on-write update of a nested dict at `path` (missing levels are created)."""
    head, *rest = path
    out = dict(tree)
    out[head] = value if not rest else set_path(tree.get(head, {}), tuple(rest), value)
    return out


def perturbation_tree(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """{site id: zeros [..., d_out]} -> the `perturbations` collection for `Linear`."""
    tree: dict[str, Any] = {}
    for site_id, value in outputs.items():
        tree = set_path(tree, (*site_id.split("."), "outputs"), value)
    return {PERTURB: tree}


def captured_inputs(collections: Mapping[str, Any], site_ids: Iterable[str]) -> dict[str, Any]:
    """The `linear_inputs` collection -> {site id: input [..., d_in]} for `site_ids`."""
    captured = collections[CAPTURE]
    return {s: get_path(captured, s.split("."))["inputs"][0] for s in site_ids}
