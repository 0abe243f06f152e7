"""The demo's measurements of one parameter tree: fast ones for the sweep, full ones for the report.

Everything goes through the evaluation suite's code (`kfac_mem.evaluation`); skills are scored by
exact match of the greedy continuation (teacher-forced check, equivalent to greedy decoding).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from kfac_mem.demo.skills import Item
from kfac_mem.evaluation import ndcg_at_k, perplexity, recitation, score_continuations
from kfac_mem.evaluation.mining import suffix_recited


@dataclasses.dataclass
class EvalSets:
    """One split of everything the demo measures."""

    memorized: dict[str, list[dict]]  # name -> rows (prefix_ids, suffix_ids)
    text: np.ndarray  # held-out windows [N, L]
    skills: dict[str, list[Item]]


def teacher_forced_strict(model, rows: list[dict], params) -> float:
    """Share of windows whose every suffix token is the argmax (= greedy exact match)."""
    if not rows:
        return float("nan")
    return float(suffix_recited(model, rows, params, 16).mean())


def skill_outcomes(model, data, items: list[Item], params) -> list[int]:
    """1 per item whose answer is the greedy continuation of its prompt, else 0 (item order)."""
    pairs = [([data.bos, *data.encode(it.prompt)], list(data.encode(it.answer))) for it in items]
    _, greedy = score_continuations(model, pairs, params, batch_size=32, share_prefix=False)
    return [int(g) for g in np.asarray(greedy)]


def skill_accuracy(model, data, items: list[Item], params) -> float:
    return float(np.mean(skill_outcomes(model, data, items, params)))


def quick(model, data, sets: EvalSets, params) -> dict[str, Any]:
    """Sweep metrics: teacher-forced strict recitation per set, perplexity, skill accuracy."""
    out: dict[str, Any] = {
        f"strict_{k}": teacher_forced_strict(model, v, params) for k, v in sets.memorized.items()
    }
    out["perplexity"] = perplexity(model, sets.text, params)["perplexity"]
    out["skills"] = {
        g: skill_accuracy(model, data, items, params) for g, items in sets.skills.items()
    }
    return out


def full(model, data, sets: EvalSets, params, ndcg_windows: int) -> dict[str, Any]:
    """Report metrics: greedy recitation (strict, loose, mean d/L with intervals, per-row outcomes
    and rows), perplexity, nDCG@10 against the unedited model, skill accuracy and per-item skill
    outcomes ("skill_outcomes", for intervals and paired tests)."""
    out: dict[str, Any] = {"recitation": {}}
    for name, rows in sets.memorized.items():
        out["recitation"][name] = (
            recitation(model, rows, params, batch_size=32)
            if rows
            else {
                "n": 0,
                "strict": float("nan"),
                "loose": float("nan"),
                "mean_distance": float("nan"),
                "intervals": {},
                "rows": [],
            }
        )
    out["perplexity"] = perplexity(model, sets.text, params)
    out["ndcg"] = ndcg_at_k(
        model, sets.text[:ndcg_windows], params=params, baseline_params=model.params, cache_dir=""
    )["ndcg"]
    out["skill_outcomes"] = {
        g: skill_outcomes(model, data, items, params) for g, items in sets.skills.items()
    }
    out["skills"] = {g: float(np.mean(v)) for g, v in out["skill_outcomes"].items()}
    return out
