"""Findings: the paper's claim checked, layer by layer, against what the analyzer measured.

The claim (docs/design.md §4): memorized examples are sharp and idiosyncratic and live in the
population's flat (low-Π) bands; shared skills are broad, consistent and live in the high bands.
Each finding compares one set with the clean set and states in how many layers the measured
numbers go the way the claim predicts: "agrees" (all), "contradicts" (none) or "mixed"; "n/a"
where the numbers are missing. Nothing is assumed: a finding is only what the report's numbers show.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _verdict(holds: int, of: int) -> str:
    if of == 0:
        return "n/a"
    return "agrees" if holds == of else "contradicts" if holds == 0 else "mixed"


def build_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per non-clean set, each prediction of the claim checked in every layer against clean."""
    clean = report.get("clean")
    if clean is None:
        return []
    layers = report["layers"]
    last = len(report["bands"]) - 1
    rows = report["ablation"]["rows"]
    out = []
    for name in report["sets"]:
        if name == clean:
            continue
        pe = {
            sid: (report["per_example"][sid][name], report["per_example"][sid][clean])
            for sid in layers
        }
        act = {sid: report["activations"][sid][name]["ratio_vs_clean"] for sid in layers}
        checks = [
            (
                "sharper per example (higher median top-k share)",
                [(x["sharpness"]["median"], c["sharpness"]["median"]) for x, c in pe.values()],
                lambda x, c: x > c,
            ),
            (
                "fewer effective directions per example (lower median participation ratio)",
                [
                    (x["participation_ratio"]["median"], c["participation_ratio"]["median"])
                    for x, c in pe.values()
                ],
                lambda x, c: x < c,
            ),
            (
                "more idiosyncratic top directions (lower top-k overlap between examples)",
                [
                    (x["idiosyncrasy"]["top_overlap"], c["idiosyncrasy"]["top_overlap"])
                    for x, c in pe.values()
                ],
                lambda x, c: x < c,
            ),
            (
                "more of each example's curvature in the bottom band",
                [(x["band_share_mean"][last], c["band_share_mean"][last]) for x, c in pe.values()],
                lambda x, c: x > c,
            ),
            (
                "less of each example's curvature in the top band",
                [(x["band_share_mean"][0], c["band_share_mean"][0]) for x, c in pe.values()],
                lambda x, c: x < c,
            ),
            (
                "stronger bottom-band activations than clean (K-FAC basis, ratio > 1)",
                [(a["kfac"][last], 1.0) for a in act.values()],
                lambda x, c: x > c,
            ),
            (
                "weaker top-band activations than clean (K-FAC basis, ratio < 1)",
                [(a["kfac"][0], 1.0) for a in act.values()],
                lambda x, c: x < c,
            ),
        ]
        if "svd" in report["bases"]:
            checks.append(
                (
                    "K-FAC bottom band separates the set from clean more than the SVD bottom band "
                    "(|log ratio| larger)",
                    [
                        (
                            abs(math.log(a["kfac"][last])) if a["kfac"][last] else None,
                            abs(math.log(a["svd"][last])) if a["svd"][last] else None,
                        )
                        for a in act.values()
                    ],
                    lambda x, c: x > c,
                )
            )
        for target in dict.fromkeys(r["target"] for r in rows):

            def delta(band_index, set_name, target=target):
                band = report["bands"][band_index]["band"]
                r = next(
                    (
                        r
                        for r in rows
                        if r["target"] == target and r["band"] == band and r["basis"] == "kfac"
                    ),
                    None,
                )
                return None if r is None else r["delta"][set_name]

            checks.append(
                (
                    f"removing the bottom band raises this set's loss more than clean's ({target})",
                    [(delta(last, name), delta(last, clean))],
                    lambda x, c: x > c,
                )
            )
            checks.append(
                (
                    f"removing the top band raises clean's loss more than this set's ({target})",
                    [(delta(0, name), delta(0, clean))],
                    lambda x, c: x < c,
                )
            )
        for claim, pairs, pred in checks:
            valid = [(x, c) for x, c in pairs if _finite(x) and _finite(c)]
            holds = sum(bool(pred(x, c)) for x, c in valid)
            out.append(
                {
                    "set": name,
                    "versus": clean,
                    "claim": claim,
                    "holds_in": holds,
                    "of": len(valid),
                    "verdict": _verdict(holds, len(valid)),
                    "values": [[x, c] for x, c in pairs],
                }
            )
    return out


def _finite(x) -> bool:
    return x is not None and isinstance(x, int | float | np.floating) and math.isfinite(x)
