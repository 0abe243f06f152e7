"""Relearning: does fine-tuning bring the removed text back?

Two conditions, each starting from the audited parameters, fine-tuned with
`kfac_mem.baselines.stress.relearn` (AdamW, clean objective, seeded batches) up to each checkpoint
of `relearn_steps` (every segment between checkpoints is one `relearn` call continuing from the
previous parameters: warm-up and cosine decay restart per segment, the optimizer state too):
  * `clean`: clean windows only; recitation measured on every memorized example;
  * `memorized_subset`: a seeded `relearn_fraction` of each memorized set (its prefix ‖ suffix
    windows; windows of different lengths are right-padded with `PAD`, which the training loss
    skips); recitation measured on the rest of the set only (disjoint).
Recitation = greedy exact / loose (Wilson intervals) and longest match, at step 0 and after each
checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kfac_mem.audit.options import AuditOptions
from kfac_mem.audit.scoring import greedy_scores, rate_block, suffix_lengths
from kfac_mem.baselines.stress import relearn
from kfac_mem.evaluation.ragged import pad_right


def split_subset(
    n: int, fraction: float, seed: int, set_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """(fine-tune indices, measured indices) of n rows: a seeded disjoint split, both non-empty."""
    if n < 2:
        raise ValueError(f"The memorized-subset relearning needs >= 2 rows per set, got {n}.")
    perm = np.random.default_rng((seed, 7, set_index)).permutation(n)
    m = min(n - 1, max(1, int(np.rint(fraction * n))))
    return np.sort(perm[:m]), np.sort(perm[m:])


def _measure(model, params, sets, options):
    out = {}
    for name, (prefixes, suffixes) in sets.items():
        sc = greedy_scores(model, params, prefixes, suffixes, options.batch_size)
        out[name] = rate_block(
            sc["exact"][:, 0],
            sc["loose"][:, 0],
            sc["match"][:, 0],
            suffix_lengths(suffixes),
            options.seed,
        )
    return out


def _curve(model, params, windows, sets, options, log):
    points = [{"step": 0, "recitation": _measure(model, params, sets, options)}]
    done, current, loss = 0, params, None
    for step in options.relearn_steps:
        current, history = relearn(
            model,
            current,
            windows,
            step - done,
            options.relearn_learning_rate,
            options.relearn_batch_size,
            seed=options.seed + step,
        )
        done = step
        loss = history[-1]["loss"] if history else loss
        points.append(
            {"step": step, "loss": loss, "recitation": _measure(model, current, sets, options)}
        )
        if log is not None:
            log(1)
    return points


def relearning(
    model,
    params,
    sets: Mapping[str, tuple[Sequence, Sequence]],  # name -> (N prefixes, N suffixes): token lists
    clean: np.ndarray,  # [M, L]
    options: AuditOptions,
    log=None,
) -> dict[str, Any]:
    """Recitation curves of both conditions (see module doc). Cost: the training steps plus one
    greedy decode of every measured example per checkpoint."""
    out: dict[str, Any] = {
        "steps": list(options.relearn_steps),
        "learning_rate": options.relearn_learning_rate,
        "batch_size": options.relearn_batch_size,
        "clean": {
            "n_windows": len(clean),
            "curve": _curve(model, params, clean, sets, options, log),
        },
    }
    train_rows, held = [], {}
    for si, (name, (prefixes, suffixes)) in enumerate(sets.items()):
        tune, keep = split_subset(len(prefixes), options.relearn_fraction, options.seed, si)
        train_rows += [list(prefixes[i]) + list(suffixes[i]) for i in tune]
        held[name] = ([prefixes[i] for i in keep], [suffixes[i] for i in keep])
    windows = pad_right(train_rows)  # one width; shorter windows padded with PAD
    out["memorized_subset"] = {
        "n_windows": len(windows),
        "fraction": options.relearn_fraction,
        "n_measured": {k: len(v[0]) for k, v in held.items()},
        "curve": _curve(model, params, windows, held, options, log),
    }
    return out
