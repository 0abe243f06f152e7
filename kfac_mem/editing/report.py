"""The edit report: one row per matrix (JSON) and a fixed-width table for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = (
    ("id", "layer", 34),
    ("method", "method", 6),
    ("value", "value", 10),
    ("kept", "kept", 10),
    ("components", "of", 10),
    ("kept_fraction", "kept frac", 9),
    ("rel_delta_fro", "|dW|/|W|", 9),
    ("rank", "rank(W')", 8),
    ("seconds", "s", 7),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("kept_fraction", "rel_delta_fro") and isinstance(value, float):
        return f"{value:.4f}"
    if key == "value" and isinstance(value, list | tuple):
        return f"[{value[0]:g},{value[1]:g})"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as an aligned table (untouched matrices are marked with `=`)."""
    head = "  ".join(f"{title:<{w}}" for _, title, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for key, _, w in COLUMNS:
            text = _cell(key, row.get(key))
            if key == "method" and row.get("untouched"):
                text = "="
            cells.append(f"{text:<{w}}")
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
