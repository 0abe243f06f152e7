"""Choose linear sites by HF id or by layer indices and projections (`layers`, `projections`)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from models.sites import LinearSite


def select_sites(
    sites: Sequence[LinearSite],
    ids: Iterable[str] | None = None,
    layers: Iterable[int] | None = None,
    projections: Iterable[str] | None = None,
) -> list[LinearSite]:
    """Sites named by `ids` (HF module paths), or by layer indices x projection short names.

    With neither, every site whose projection is in `projections` is chosen. The result keeps the
    model's forward order. Unknown ids, layers or projections raise a ValueError that lists what
    exists.
    """
    by_id = {s.id: s for s in sites}
    if ids is not None:
        ids = list(ids)
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            hints = {u: difflib.get_close_matches(u, by_id, n=2) for u in unknown}
            raise ValueError(
                f"Unknown layer ids {unknown} (closest: {hints}). Layer ids are HF module paths "
                f"such as {sites[0].id!r}; this model has {len(sites)} linear layers."
            )
        chosen = set(ids)
    else:
        known_projections = sorted({s.projection for s in sites})
        projections = tuple(projections) if projections is not None else tuple(known_projections)
        bad = [p for p in projections if p not in known_projections]
        if bad:
            raise ValueError(f"Unknown projections {bad}; this model has {known_projections}.")
        known_layers = sorted({s.layer for s in sites})
        layers = list(known_layers if layers is None else layers)
        bad_layers = [i for i in layers if i not in known_layers]
        if bad_layers:
            raise ValueError(
                f"Layers {bad_layers} do not exist; this model has layers "
                f"{known_layers[0]}..{known_layers[-1]}."
            )
        chosen = {s.id for s in sites if s.layer in set(layers) and s.projection in projections}
    if not chosen:
        raise ValueError("The layer selection is empty; choose at least one linear layer.")
    return [s for s in sites if s.id in chosen]


def input_groups(sites: Sequence[LinearSite]) -> dict[str, LinearSite]:
    """Input group id -> the first selected site of that group (whose captured input is used)."""
    groups: dict[str, LinearSite] = {}
    for s in sites:
        groups.setdefault(s.input_group, s)
    return groups
