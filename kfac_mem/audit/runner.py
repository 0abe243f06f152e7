"""`run_audit`: every attack against one (edited) model, on each memorized set, plus the report."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kfac_mem.audit.beam import beam_extraction
from kfac_mem.audit.membership import membership_inference
from kfac_mem.audit.options import AuditOptions
from kfac_mem.audit.prefix import prefix_attacks, prompt_variants
from kfac_mem.audit.relearning import relearning
from kfac_mem.audit.sampling import sampling_extraction
from kfac_mem.audit.scoring import span
from kfac_mem.errors import InputError
from kfac_mem.stats import proportion


def check_output_dir(out_dir: str) -> str:
    """`out_dir` as an absolute path; refused if it exists and is not an empty directory."""
    out = os.path.abspath(out_dir)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(
            f"`out_dir` {out} exists and is not an empty directory; the audit writes only into a "
            "new or empty directory: choose another `out_dir`."
        )
    return out


def as_token_lists(
    name: str, rows: Sequence[Mapping[str, Any]]
) -> tuple[list[list[int]], list[list[int]]]:
    """(prefixes, suffixes): N token lists each, of any non-empty lengths (the quotes protocol
    lets them vary per row, docs/design.md §3)."""
    if not rows:
        raise InputError(f"memorized set {name!r} is empty.")
    try:
        prefixes = [list(map(int, r["prefix_ids"])) for r in rows]
        suffixes = [list(map(int, r["suffix_ids"])) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"memorized set {name!r}: every row needs `prefix_ids` and `suffix_ids` (lists of "
            f"token ids) ({e})."
        ) from None
    if any(not p for p in prefixes) or any(not x for x in suffixes):
        raise InputError(f"memorized set {name!r}: rows need non-empty prefixes and suffixes.")
    return prefixes, suffixes


def length_matched(clean: np.ndarray, widths: Sequence[int]) -> list[np.ndarray]:
    """Clean windows cut to the memorized windows' lengths: window j keeps its first
    widths[j mod N] tokens, so both sides have the same length mix (all of `clean[:, :w]` when
    every memorized window is w tokens)."""
    widths = np.asarray(widths, np.int64)
    return [clean[j, : widths[j % widths.size]] for j in range(len(clean))]


def _any_attack(res: dict[str, Any], n: int) -> dict[str, Any]:
    """Per example: extracted (exact / loose) by any attack that ran; aggregated with Wilson."""
    exact, loose = np.zeros(n, bool), np.zeros(n, bool)
    sources: dict[str, np.ndarray] = {}
    for t, r in res.get("sampling", {}).get("temperatures", {}).items():
        sources[f"sampling T={t}"] = np.asarray([e["exact"] for e in r["examples"]])
        loose |= np.asarray([e["loose"] for e in r["examples"]])
    if "beam" in res:
        sources["beam"] = np.asarray([e["exact"] for e in res["beam"]["examples"]])
        loose |= np.asarray([e["loose"] for e in res["beam"]["examples"]])
    if "prefix" in res:
        sources["prefix"] = np.asarray(
            [bool(e["exact_variants"]) for e in res["prefix"]["examples"]]
        )
        loose |= np.asarray([bool(e["loose_variants"]) for e in res["prefix"]["examples"]])
    for v in sources.values():
        exact |= v
    rates = {k: proportion(v) for k, v in sources.items()}
    strongest = max(rates, key=lambda k: rates[k]["rate"]) if rates else None
    return {
        "exact": proportion(exact),
        "loose": proportion(loose | exact),
        "by_attack_exact": rates,
        "strongest": strongest,
        "examples": [bool(x) for x in exact],
    }


def run_audit(
    model,
    baseline,
    memorized: Mapping[str, Sequence[Mapping[str, Any]]],
    clean: np.ndarray,
    out_dir: str | None = None,
    options: AuditOptions | None = None,
    params=None,
    baseline_params=None,
    log=print,
) -> dict[str, Any]:
    """Audit `model` (with `params`, default its own) against the unedited `baseline`.

    Args:
      model, baseline: `models.LanguageModel`s of one architecture (the baseline is the reference
        of the beam rank, the relative log-probability and the reference-model MIA score).
      memorized: {set name: rows with `prefix_ids`, `suffix_ids`} (lengths may vary per row,
        the quotes protocol).
      clean: held-out clean windows int [M, L'] (MIA negatives, prepend filler, relearning data);
        for MIA each window is cut to a memorized window's width (`length_matched`; L' must be
        at least the longest).
      out_dir: where report.md, results.json, examples/*.jsonl and figures/ are written (a new
        or empty directory; None: nothing is written).
      options: the attacks and their budgets (`AuditOptions`; default the issue's protocol).

    Returns:
      {"options", "sets": {name: {"n", "prefix_len", "suffix_len" (an int, or "min-max" when
       rows differ), <attack>: ..., "any_attack"}},
       "relearning", "cost", "wall_seconds"}; every rate a Wilson `proportion` (n, lo, hi).
    """
    import dataclasses

    from tqdm.auto import tqdm

    options = AuditOptions() if options is None else options
    out = check_output_dir(out_dir) if out_dir is not None else None
    params = model.params if params is None else params
    baseline_params = baseline.params if baseline_params is None else baseline_params
    if model.config.vocab_size != baseline.config.vocab_size:
        raise ValueError("`model` and `baseline` need the same vocabulary.")
    clean = np.asarray(clean, np.int32)
    if clean.ndim != 2 or len(clean) < 1:
        raise ValueError(f"`clean` must be token windows [M >= 1, L], got shape {clean.shape}.")
    sets = {name: as_token_lists(name, rows) for name, rows in memorized.items()}
    if not sets:
        raise ValueError("`memorized` needs at least one set (NAME=FILE).")
    filler = clean.reshape(-1).tolist()
    a = set(options.attacks)
    stages = 0
    for prefixes, _ in sets.values():
        stages += len(options.temperatures) * ("sampling" in a)
        stages += len(prompt_variants(prefixes, options, filler)) * ("prefix" in a)
        stages += ("beam" in a) + ("membership" in a)
    stages += 2 * len(options.relearn_steps) * ("relearning" in a)
    bar = tqdm(total=stages, desc="audit", disable=not options.progress, leave=False)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "model": getattr(model, "source", None),
        "baseline": getattr(baseline, "source", None),
        "options": dataclasses.asdict(options),
        "sets": {},
    }
    cost: dict[str, Any] = {}
    for si, (name, (prefixes, suffixes)) in enumerate(sets.items()):
        res: dict[str, Any] = {
            "n": len(prefixes),
            "prefix_len": span([len(p) for p in prefixes]),
            "suffix_len": span([len(x) for x in suffixes]),
        }
        if "sampling" in a:
            bar.set_postfix_str(f"{name}: sampling")
            res["sampling"] = sampling_extraction(
                model, params, prefixes, suffixes, options, si, bar
            )
        if "beam" in a:
            bar.set_postfix_str(f"{name}: beam")
            res["beam"] = beam_extraction(
                model, params, baseline, baseline_params, prefixes, suffixes, options
            )
            bar.update(1)
        if "prefix" in a:
            bar.set_postfix_str(f"{name}: prefix")
            res["prefix"] = prefix_attacks(model, params, prefixes, suffixes, options, filler, bar)
        if "membership" in a:
            bar.set_postfix_str(f"{name}: membership")
            windows = [p + x for p, x in zip(prefixes, suffixes)]
            width = max(len(w) for w in windows)
            if clean.shape[1] < width:
                raise InputError(
                    f"`clean` windows are {clean.shape[1]} tokens wide; membership inference on "
                    f"set {name!r} needs >= {width} (prefix + suffix)."
                )
            res["membership"] = membership_inference(
                model,
                params,
                baseline,
                baseline_params,
                windows,
                length_matched(clean, [len(w) for w in windows]),
                options.min_k,
                options.seed,
                options.batch_size,
            )
            bar.update(1)
        res["any_attack"] = _any_attack(res, len(prefixes))
        cost[name] = {
            k: res[k].get("decoder_calls_per_example")
            for k in ("sampling", "beam", "prefix")
            if k in res
        }
        if "membership" in res:
            cost[name]["membership_forwards_per_window"] = 2
        results["sets"][name] = res
    if "relearning" in a:
        bar.set_postfix_str("relearning")
        results["relearning"] = relearning(model, params, sets, clean, options, bar.update)
        cost["relearning_train_steps"] = 2 * options.relearn_steps[-1]
    bar.close()
    results["cost"] = {
        "unit": "decoder calls per example (1 prefill of the prompt or 1 cached one-token step "
        "per generated token, per sequence)",
        **cost,
    }
    results["wall_seconds"] = time.perf_counter() - t0
    if out is not None:
        from kfac_mem.audit.report import write_report

        write_report(results, out)
        if log is not None:
            log(f"wrote {out}/report.md, results.json, figures/")
    return results
