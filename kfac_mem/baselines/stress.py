"""Stress tests of a memorization removal: is the memory gone, or only hidden?

The paper cautions that an edit may not remove memories completely (§8) and reports one stress
test (Table 6, positional perturbation after Huang et al. 2024). Two tests, for any parameter tree:

**Positional perturbation.** For a memorized row [prefix P | suffix S] and a shift t:
  * mode `drop` (default): the prompt is the prefix without its first t tokens (the window starts t
    tokens later, so every prefix token sits t positions earlier and the context is shorter);
  * mode `prepend`: t unrelated tokens (from held-out text) are put before the full prefix (every
    prefix token sits t positions later).
  The model greedily generates |S| tokens; the *exact-match length* is the number of leading
  generated tokens equal to the true suffix (0..S; the length of the exact run from the start of
  the continuation). Reported per shift and over all (row, shift) pairs as mean ± std, next to the
  unperturbed prompt (t = 0), and as the mean over rows of the best shift (max over t ≥ 1): a
  memory that resurfaces under some shift counts there.

**Relearning.** Fine-tune the (edited) parameters for a few steps on clean text only
(`kfac_mem.training.train`, AdamW), then measure recitation (strict / loose / mean d/L) on the
memorized sets and held-out perplexity. Memories that come back without ever being shown again were
suppressed rather than removed. Run it on the unedited model too, as the reference for drift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kfac_mem.evaluation.batching import round_batch
from kfac_mem.evaluation.perplexity import perplexity
from kfac_mem.evaluation.ragged import greedy_continuations
from kfac_mem.evaluation.recitation import recitation, summary
from kfac_mem.training import TrainConfig, train

SHIFT_MODES = ("drop", "prepend")


@dataclasses.dataclass(frozen=True)
class StressOptions:
    """Settings of both stress tests.

    Attributes:
      shifts: prefix shifts t ≥ 1 (those ≥ the prefix length are skipped in `drop` mode).
      shift_mode: drop | prepend (see module doc).
      relearn_steps: fine-tuning steps on clean text (0: no relearning test).
      relearn_learning_rate, relearn_batch_size: AdamW peak rate (cosine decay) and rows per step.
      seed: relearning batch order.
      batch_size: rows per generation batch.
    """

    shifts: tuple[int, ...] = (1, 2, 4, 8, 16)
    shift_mode: str = "drop"
    relearn_steps: int = 50
    relearn_learning_rate: float = 1e-4
    relearn_batch_size: int = 8
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self):
        if self.shift_mode not in SHIFT_MODES:
            raise ValueError(f"`shift_mode` must be one of {SHIFT_MODES}, got {self.shift_mode!r}.")
        if any(t < 1 for t in self.shifts):
            raise ValueError(
                f"`shifts` must be >= 1 (t = 0 is always measured), got {self.shifts}."
            )
        if self.relearn_steps < 0 or self.relearn_batch_size < 1:
            raise ValueError("`relearn_steps` must be >= 0 and `relearn_batch_size` >= 1.")


def exact_match_length(generated: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Leading tokens of each generated row equal to its target, int [N] (0..S), rows [N, S].

    Ragged rows (lists of token lists; row i's target S_i tokens, its generation at least as
    long) count against each row's own target."""
    if isinstance(target, list) and not isinstance(target, np.ndarray):
        return np.asarray(
            [
                int(exact_match_length(np.asarray([g[: len(t)]]), np.asarray([t]))[0])
                for g, t in zip(generated, target)
            ],
            np.int64,
        )
    eq = np.asarray(generated) == np.asarray(target)
    return np.where(eq.all(axis=1), eq.shape[1], eq.argmin(axis=1))


def shifted_prompts(
    rows: Sequence[Mapping[str, Any]], shift: int, mode: str, filler: Sequence[int] | None
) -> list[list[int]]:
    """The prompts of `rows` under a shift of `shift` tokens (see module doc)."""
    if mode == "drop":
        return [list(r["prefix_ids"])[shift:] for r in rows]
    if filler is None or len(filler) < shift:
        raise ValueError(
            f"shift_mode 'prepend' needs at least {shift} filler tokens (held-out text), got "
            f"{0 if filler is None else len(filler)}."
        )
    head = list(map(int, filler))[len(filler) - shift :]
    return [head + list(r["prefix_ids"]) for r in rows]


def _mean_std(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(x)), "std": float(np.std(x))}


def positional_perturbation(
    model,
    rows: Sequence[Mapping[str, Any]],
    params=None,
    shifts: Sequence[int] = StressOptions.shifts,
    mode: str = "drop",
    filler: Sequence[int] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Exact-match length of greedy continuations under prefix shifts (see module doc).

    Rows may differ in prefix and suffix lengths (the quotes protocol): a `drop` shift is used
    only when it leaves every row at least one prefix token, and each row is scored against its
    own suffix (`suffix_len` is then the longest).

    Returns:
      {"mode", "n", "suffix_len", "shifts" (those used), "unperturbed": {mean, std},
       "per_shift": {t: {mean, std}}, "perturbed": {mean, std} over all (row, shift) pairs,
       "max_over_shifts": {mean, std} of each row's best shift}.
    """
    if mode not in SHIFT_MODES:
        raise ValueError(f"`mode` must be one of {SHIFT_MODES}, got {mode!r}.")
    if not rows:
        raise ValueError("positional_perturbation() needs at least one memorized row.")
    suffix = [list(map(int, r["suffix_ids"])) for r in rows]
    prefix_len = min(len(r["prefix_ids"]) for r in rows)
    used = [t for t in sorted(set(shifts)) if mode == "prepend" or t < prefix_len]
    lengths = {}
    for t in [0, *used]:
        prompts = shifted_prompts(rows, t, mode, filler)
        generated = greedy_continuations(
            model, prompts, [len(x) for x in suffix], params, batch_size
        )
        lengths[t] = exact_match_length(generated, suffix)
    out: dict[str, Any] = {
        "mode": mode,
        "n": len(rows),
        "suffix_len": max(len(x) for x in suffix),
        "shifts": used,
        "unperturbed": _mean_std(lengths[0]),
        "per_shift": {str(t): _mean_std(lengths[t]) for t in used},
    }
    if used:
        stacked = np.stack([lengths[t] for t in used])  # [shifts, N]
        out["perturbed"] = _mean_std(stacked)
        out["max_over_shifts"] = _mean_std(stacked.max(axis=0))
    return out


def relearn(
    model,
    params,
    retain: np.ndarray,
    steps: int,
    learning_rate: float,
    batch_size: int = 8,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
):
    """`params` after `steps` AdamW steps on clean windows `retain` [M, L] (no memorized data)."""
    retain = np.asarray(retain, np.int32)
    if retain.ndim != 2 or retain.shape[0] < 1:
        raise ValueError(f"Relearning needs clean windows [M >= 1, L], got {retain.shape}.")
    rows = round_batch(batch_size, model)

    def batches(i: int) -> np.ndarray:
        rng = np.random.default_rng((seed, i))
        return retain[rng.choice(retain.shape[0], rows, replace=rows > retain.shape[0])]

    config = TrainConfig(
        steps=steps,
        batch_size=rows,
        learning_rate=learning_rate,
        warmup_steps=max(1, steps // 10),
        weight_decay=0.0,
        log_every=max(1, steps),
        checkpoint_every=steps + 1,
    )
    new, history = train(model.with_params(params), batches, config, log=log)
    return new, history


def relearning(
    model,
    params,
    sets: Mapping[str, Sequence[Mapping[str, Any]]],
    text: np.ndarray,
    retain: np.ndarray,
    options: StressOptions = StressOptions(),
) -> dict[str, Any]:
    """Recitation on each memorized set and held-out perplexity after `relearn`."""
    new, history = relearn(
        model,
        params,
        retain,
        options.relearn_steps,
        options.relearn_learning_rate,
        options.relearn_batch_size,
        options.seed,
    )
    return {
        "steps": options.relearn_steps,
        "learning_rate": options.relearn_learning_rate,
        "batch_size": options.relearn_batch_size,
        "final_loss": history[-1]["loss"] if history else None,
        "recitation": {
            name: summary(recitation(model, rows, new, options.batch_size, include_rows=False))
            for name, rows in sets.items()
            if rows
        },
        "perplexity": perplexity(model, text, new)["perplexity"],
    }


def stress_tests(
    model,
    params,
    sets: Mapping[str, Sequence[Mapping[str, Any]]],
    text: np.ndarray,
    retain: np.ndarray | None,
    options: StressOptions = StressOptions(),
) -> dict[str, Any]:
    """Both stress tests of one parameter tree on the memorized `sets` ({name: rows})."""
    filler = np.asarray(text).reshape(-1).tolist()
    out: dict[str, Any] = {
        "positional": {
            name: positional_perturbation(
                model, rows, params, options.shifts, options.shift_mode, filler, options.batch_size
            )
            for name, rows in sets.items()
            if rows
        }
    }
    if options.relearn_steps > 0:
        if retain is None:
            raise ValueError("The relearning test needs clean retain windows (`retain`).")
        out["relearning"] = relearning(model, params, sets, text, retain, options)
    return out
