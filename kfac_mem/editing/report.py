"""The edit report: one row per matrix (JSON) and a fixed-width table for the terminal.

The table names what each number is a share of (docs/design.md §5.4): "kept mass" is the share of
the method's mass kept (curvature mass Σλμ for kfac and band, Σσ² for svd; none for random
bases), "kept comps" / "of" count the rank-one components kept out of all of the matrix's
(d_out·d_in curvature components; min(d_out, d_in) singular components for svd), and "kept share"
is their ratio. "setting" spells the method's knob: ρ = mass kept, drop = singular components
dropped, band = components removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = (
    ("id", "layer", 34),
    ("method", "method", 6),
    ("value", "setting", 12),
    ("kept_mass", "kept mass", 9),
    ("kept", "kept comps", 10),
    ("components", "of", 10),
    ("kept_share", "kept share", 10),
    ("rel_delta_fro", "|dW|/|W|", 9),
    ("rank", "rank(W')", 8),
    ("seconds", "s", 7),
)

LEGEND = (
    "kept mass: share of curvature mass (kfac, band) or of squared singular values (svd) kept; "
    "kept comps / of: rank-one components kept / all (d_out*d_in, or min(d_out, d_in) for svd); "
    "kept share = kept comps / of; '=' marks an untouched matrix"
)


def setting(method: str, value: Any) -> str:
    """The knob of one row as text: "ρ=0.6", "drop=0.5", "band [10,25)%"."""
    if isinstance(value, list | tuple):
        return f"band [{value[0]:g},{value[1]:g})%"
    if value is None:
        return "-"
    return f"drop={value:g}" if method == "svd" else f"ρ={value:g}"


def _cell(key: str, value: Any, row: dict[str, Any]) -> str:
    if key == "value":
        return setting(str(row.get("method")), value)
    if value is None:
        return "-"
    if key in ("kept_mass", "kept_share", "rel_delta_fro") and isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], legend: bool = True) -> str:
    """Rows as an aligned table (untouched matrices are marked with `=`), then the legend."""
    head = "  ".join(f"{title:<{w}}" for _, title, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for key, _, w in COLUMNS:
            text = _cell(key, row.get(key), row)
            if key == "method" and row.get("untouched"):
                text = "="
            cells.append(f"{text:<{w}}")
        lines.append("  ".join(cells).rstrip())
    if legend:
        lines.append(LEGEND)
    return "\n".join(lines)


def markdown_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The same rows as a Markdown table (for report.md files)."""
    lines = [
        "| matrix | method | setting | kept mass | kept comps | of | kept share | ‖ΔW‖/‖W‖ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mass = r.get("kept_mass")
        lines.append(
            f"| {r['id']} | {'=' if r.get('untouched') else r['method']} | "
            f"{setting(r['method'], r.get('value'))} | "
            f"{'-' if mass is None else f'{mass:.4f}'} | {r['kept']} | {r['components']} | "
            f"{r['kept_share']:.4f} | {r['rel_delta_fro']:.4f} |"
        )
    return lines
