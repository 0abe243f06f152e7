"""The memorization measure every LM experiment chooses on: recitation of memorized sets and
perplexity of held-out text, of one parameter tree, against the unedited model.

    measure = memorization_measure(model, {"train": rows}, windows)   # built once
    row = measure(edited_params)      # {"strict_train", "recitation": {...}, "ppl_ratio", ...}

`kfac-mem sweep` (`experiments.memorization`) and the SmolLM2 demo declare their sweep with it;
the numbers are those of `kfac_mem.evaluation` (`recitation`, `perplexity`), so a row equals what
`kfac-mem evaluate` reports for the same edited weights (docs/design.md §3, §5.9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kfac_mem.evaluation.mining import suffix_recited
from kfac_mem.evaluation.perplexity import perplexity
from kfac_mem.evaluation.recitation import recitation, summary
from kfac_mem.stats import paired_difference, proportion

__all__ = ["RECITATION_MODES", "memorization_measure", "perplexity_ratio"]

RECITATION_MODES = ("greedy", "teacher-forced")


def perplexity_ratio(
    window_nll: Sequence[float], reference_window_nll: Sequence[float]
) -> dict[str, Any]:
    """{"ratio", "n", "lo", "hi"}: perplexity / reference perplexity on the same windows, i.e.
    exp(mean over windows of the per-window mean NLL difference), with the 95% interval of a
    seeded paired bootstrap over windows (`stats.paired_difference`), exponentiated. All windows
    have the same length, so this equals the ratio of the token-weighted perplexities."""
    d = paired_difference(window_nll, reference_window_nll)

    def exp(x):
        return None if x is None else float(math.exp(x))

    return {
        "ratio": exp(d["difference"]),
        "n": d["n"],
        "lo": exp(d["lo"]),
        "hi": exp(d["hi"]),
        "method": "paired-bootstrap-over-windows",
    }


def _teacher_forced(model, rows, params, batch_size: int) -> dict[str, Any]:
    strict = [int(hit) for hit in suffix_recited(model, rows, params, batch_size)]
    return {
        "n": len(strict),
        "strict": sum(strict) / len(strict),
        "intervals": {"strict": proportion(strict)},
        "outcomes": {"strict": strict},
        "mode": "teacher-forced",
    }


def memorization_measure(
    model,
    memorized: Mapping[str, Sequence[dict[str, Any]]],
    windows: np.ndarray,
    *,
    recitation_mode: str = "greedy",
    batch_size: int = 32,
    reference_params=None,
    keep_outcomes: bool = False,
) -> Callable[[Any], dict[str, Any]]:
    """A measure (parameters -> metrics) for the experiment harness (`experiments.sweep`).

    Args:
      model: the unedited model; its parameters are the reference unless `reference_params`.
      memorized: set name -> rows with `prefix_ids` / `suffix_ids` (each non-empty).
      windows: held-out token windows int [N, L] for perplexity.
      recitation_mode: "greedy" (generation, scored strict / loose / mean d/L as in
        `evaluation.recitation`) or "teacher-forced" (strict only, one forward per window).
      batch_size: rows per forward / generation batch.
      reference_params: the parameters ratios are taken against (default `model.params`); their
        per-window NLL is computed once, here.
      keep_outcomes: keep the per-row outcome lists in each set's summary (for paired tests).

    Returns a function of a parameter tree giving {"recitation": {set: {"n", "strict", ...,
    "intervals"}}, "strict_<set>" (and "loose_<set>" when greedy), "perplexity", "nll", "tokens",
    "windows", "ppl_ratio", "ppl_ratio_interval"}; rates are fractions in [0, 1] with Wilson 95%
    intervals (mean d/L: bootstrap).
    """
    if recitation_mode not in RECITATION_MODES:
        raise ValueError(
            f"`recitation_mode` must be one of {RECITATION_MODES}, got {recitation_mode!r}."
        )
    for name, rows in memorized.items():
        if not rows:
            raise ValueError(f"The memorized set {name!r} is empty.")
    reference = model.params if reference_params is None else reference_params
    ref = perplexity(model, windows, reference, batch_size, include_windows=True)

    def recite(rows, params) -> dict[str, Any]:
        if recitation_mode == "greedy":
            return summary(recitation(model, rows, params, batch_size, include_rows=False))
        return _teacher_forced(model, rows, params, batch_size)

    def measure(params) -> dict[str, Any]:
        row: dict[str, Any] = {"recitation": {}}
        for name, rows in memorized.items():
            res = recite(rows, params)
            if not keep_outcomes:
                res.pop("outcomes", None)
            row["recitation"][name] = res
            row[f"strict_{name}"] = res["strict"]
            if "loose" in res:
                row[f"loose_{name}"] = res["loose"]
        ppl = perplexity(model, windows, params, batch_size, include_windows=True)
        interval = perplexity_ratio(ppl.pop("window_nll"), ref["window_nll"])
        ratio = ppl["perplexity"] / ref["perplexity"]  # = interval's point, up to rounding
        row.update(
            perplexity=ppl["perplexity"],
            nll=ppl["nll"],
            tokens=ppl["tokens"],
            windows=ppl["windows"],
            ppl_ratio=ratio,
            ppl_ratio_interval={**interval, "ratio": ratio},
        )
        return row

    return measure
