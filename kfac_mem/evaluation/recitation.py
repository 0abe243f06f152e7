"""Recitation of memorized windows: greedy generation from the prefix, scored against the suffix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kfac_mem.errors import InputError
from kfac_mem.evaluation.levenshtein import recitation_match
from kfac_mem.evaluation.ragged import greedy_continuations
from kfac_mem.stats import bootstrap_mean, compare_paired, proportion

# Row fields carried into the per-example output as provenance (when present).
PROVENANCE_FIELDS = ("id", "line", "corpus", "source", "doc_index", "start", "split")


def _decode(tokenizer, ids: Sequence[int]) -> str | None:
    return (
        None
        if tokenizer is None
        else tokenizer.decode(list(map(int, ids)), skip_special_tokens=False)
    )


def recitation(
    model,
    rows: Sequence[dict[str, Any]],
    params=None,
    batch_size: int = 32,
    include_rows: bool = True,
) -> dict[str, Any]:
    """Greedy-generate |suffix| tokens from each prefix and compare with the true suffix.

    Rows may differ in prefix and suffix length (the quotes protocol, docs/design.md §3): they are
    decoded in batches grouped by prefix-length bucket (`ragged.greedy_continuations`), and each
    row's result is the one it gets when evaluated alone.

    Args:
      model: a `models.LanguageModel` (its tokenizer, if any, decodes the per-example text).
      rows: dicts with `prefix_ids` and `suffix_ids` (token id lists of any lengths ≥ 1; see
        `io.read_memorized`).
      params: parameter tree to evaluate instead of `model.params` (e.g. edited weights).
      batch_size: rows per generation batch (rounded up to a multiple of the data-parallel size).
      include_rows: also return one result row per example.

    Returns:
      {"n", "strict", "loose", "mean_distance"} with fractions in [0, 1]: strict = share of rows
      whose generation equals the suffix (d = 0); loose = share with 1 − d/L ≥ 0.75; mean_distance
      = mean of d/L (d: token-level Levenshtein distance, L: suffix length). "intervals": the
      95% interval of each (Wilson for strict/loose, seeded bootstrap over rows for mean d/L);
      "outcomes": the per-row strict, loose (0/1) and d/L lists, in row order, for paired
      tests against another model on the same rows (`paired`). With `include_rows`,
      "rows": per example the distance, flags, generated ids and the decoded prefix, true suffix and
      generated text.
    """
    if not rows:
        raise ValueError("recitation() needs at least one (prefix, suffix) row.")
    for i, r in enumerate(rows):
        if "prefix_ids" not in r or "suffix_ids" not in r:
            raise InputError(f"`rows[{i}]` lacks `prefix_ids`/`suffix_ids`.")
        if not len(r["prefix_ids"]) or not len(r["suffix_ids"]):
            raise InputError(f"`rows[{i}]` has an empty `prefix_ids` or `suffix_ids`.")
    prefixes = [list(map(int, r["prefix_ids"])) for r in rows]
    suffixes = [list(map(int, r["suffix_ids"])) for r in rows]
    generated = greedy_continuations(
        model, prefixes, [len(s) for s in suffixes], params, batch_size
    )
    tok = model.tokenizer
    per_row, strict, loose, dist = [], [], [], []
    for i, (row, suffix) in enumerate(zip(rows, suffixes)):
        gen = generated[i]
        d, norm, is_strict, is_loose = recitation_match(gen, suffix)
        strict.append(int(is_strict))
        loose.append(int(is_loose))
        dist.append(float(norm))
        if include_rows:
            out = {
                "index": i,
                **{k: row[k] for k in PROVENANCE_FIELDS if k in row},
                "distance": d,
                "normalized_distance": norm,
                "strict": is_strict,
                "loose": is_loose,
                "generated_ids": gen,
            }
            if tok is not None:
                out.update(
                    prefix_text=_decode(tok, prefixes[i]),
                    suffix_text=_decode(tok, suffix),
                    generated_text=_decode(tok, gen),
                )
            per_row.append(out)
    result = summarize_outcomes({"strict": strict, "loose": loose, "normalized_distance": dist})
    if include_rows:
        result["rows"] = per_row
    return result


def summarize_outcomes(outcomes: dict[str, list]) -> dict[str, Any]:
    """The aggregate numbers of per-row outcomes {"strict", "loose", "normalized_distance"}:
    {"n", "strict", "loose", "mean_distance", "intervals", "outcomes"} (see `recitation`)."""
    strict, loose, dist = (outcomes[k] for k in ("strict", "loose", "normalized_distance"))
    n = len(strict)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "strict": nan, "loose": nan, "mean_distance": nan, "intervals": {}}
    return {
        "n": n,
        "strict": sum(strict) / n,
        "loose": sum(loose) / n,
        "mean_distance": sum(dist) / n,
        "intervals": {
            "strict": proportion(strict),
            "loose": proportion(loose),
            "mean_distance": bootstrap_mean(dist),
        },
        "outcomes": {"strict": list(strict), "loose": list(loose), "normalized_distance": dist},
    }


def paired(result: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """`result` − `other` on the same rows, per measure: the paired difference with its 95%
    interval, and exact McNemar for strict and loose (`stats.compare_paired`)."""
    a, b = result.get("outcomes"), other.get("outcomes")
    if not a or not b or len(a["strict"]) != len(b["strict"]):
        raise ValueError("paired() needs the per-row outcomes of both results on the same rows.")
    return {
        "strict": compare_paired(a["strict"], b["strict"]),
        "loose": compare_paired(a["loose"], b["loose"]),
        "mean_distance": compare_paired(a["normalized_distance"], b["normalized_distance"]),
    }


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The aggregate numbers of a `recitation` result, without per-example rows."""
    return {k: v for k, v in result.items() if k != "rows"}
