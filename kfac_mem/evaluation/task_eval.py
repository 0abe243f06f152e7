"""Scoring the task specs of `tasks.py` on a model: choice ranking and exact-match generation.

Contexts and continuations are tokenized separately with the model's tokenizer and concatenated
(as OLMES does), so the scored continuation tokens are exactly the continuation's own tokens. Long
contexts lose tokens on the left to fit `max_length`. Requests are sorted by length and batched with
bucketed shapes; batches are split over the mesh's data axes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from kfac_mem.evaluation.batching import length_bucket, place_batch, round_batch
from kfac_mem.evaluation.prefix_cache import (
    continuation_scores_after,
    generate_after,
    prefill,
    shared_prefix_len,
)
from kfac_mem.evaluation.scoring import continuation_scores
from kfac_mem.evaluation.tasks import (
    GROUPS,
    Example,
    TaskSpec,
    cut_at_stop,
    is_correct,
    load_examples,
    resolve_tasks,
)
from kfac_mem.stats import bootstrap_ratio, compare_paired, proportion, stratified_ratio


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def _prefill_shared(model, params, seqs: Sequence[Sequence[int]], enabled: bool):
    """(n shared tokens, prefix caches, prefix mask [1, W0]); (0, None, None) when not worth it."""
    n0 = shared_prefix_len(seqs) if enabled else 0
    if not n0:
        return 0, None, None
    w0 = length_bucket(n0)
    tokens = np.zeros((1, w0), np.int32)
    mask = np.zeros((1, w0), np.int32)
    tokens[0, w0 - n0 :] = seqs[0][:n0]
    mask[0, w0 - n0 :] = 1
    mask = jnp.asarray(mask)
    return n0, prefill(model, params, jnp.asarray(tokens), mask), mask


def score_continuations(
    model,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    params=None,
    batch_size: int = 8,
    max_length: int = 2048,
    share_prefix: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood of each continuation given its context (token id lists).

    Args:
      pairs: (context ids, continuation ids); the context is cut from the left so that both fit in
        `max_length` tokens. Contexts need at least one token, continuations too.
      share_prefix: run the context prefix common to all requests (few-shot examples) once and
        reuse its KV cache (`prefix_cache.py`); same numbers up to float rounding.

    Returns:
      (sum of log p of the continuation tokens, float64 [n]; whether greedy decoding would produce
      the continuation, bool [n]).
    """
    params = model.params if params is None else params
    ctxs, conts = [], []
    for i, (ctx, cont) in enumerate(pairs):
        ctx, cont = list(ctx), list(cont)
        if not cont or not ctx:
            raise ValueError(
                f"Request {i}: empty {'continuation' if not cont else 'context'}; "
                f"both need at least one token."
            )
        if len(cont) >= max_length:
            raise ValueError(
                f"Request {i}: the continuation has {len(cont)} tokens, more than "
                f"`max_length` - 1 = {max_length - 1}; raise `max_length`."
            )
        ctxs.append(ctx[-(max_length - len(cont)) :])
        conts.append(cont)
    n0, caches, prefix_mask = _prefill_shared(model, params, ctxs, share_prefix)
    seqs = [ctx[n0:] + cont for ctx, cont in zip(ctxs, conts)]
    starts = [len(ctx) - n0 for ctx in ctxs]
    lens = [len(cont) for cont in conts]
    rows = round_batch(batch_size, model, len(seqs))
    order = np.argsort([len(s) for s in seqs], kind="stable")
    logp = np.zeros(len(seqs), np.float64)
    greedy = np.zeros(len(seqs), bool)
    for b in range(0, len(order), rows):
        idx = order[b : b + rows]
        width = length_bucket(max(len(seqs[i]) for i in idx))
        cont_width = length_bucket(max(lens[i] for i in idx), minimum=4)
        tokens = np.zeros((rows, width), np.int32)
        start = np.ones((rows,), np.int32)
        length = np.zeros((rows,), np.int32)
        for r, i in enumerate(idx):
            tokens[r, : len(seqs[i])] = seqs[i]
            start[r], length[r] = starts[i], lens[i]
        batch = [place_batch(model, x) for x in (tokens, start, length)]
        if n0:
            lp, gr = continuation_scores_after(
                model, params, caches, prefix_mask, jnp.int32(n0), *batch, cont_width
            )
        else:
            lp, gr = continuation_scores(model, params, *batch, cont_width)
        logp[idx] = np.asarray(lp, np.float64)[: len(idx)]
        greedy[idx] = np.asarray(gr)[: len(idx)]
    return logp, greedy


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    params=None,
    batch_size: int = 8,
    share_prefix: bool = True,
) -> list[list[int]]:
    """Greedy continuations (max_new_tokens ids each) of token prompts, batched by length, with
    the prompts' common prefix prefilled once when `share_prefix` (see `score_continuations`)."""
    from models import greedy_generate
    from models.generate import left_pad

    params = model.params if params is None else params
    n0, caches, prefix_mask = _prefill_shared(model, params, prompts, share_prefix)
    rest = [list(p[n0:]) for p in prompts]
    rows = round_batch(batch_size, model, len(rest))
    order = np.argsort([len(p) for p in rest], kind="stable")
    out: list[list[int]] = [[] for _ in rest]
    for b in range(0, len(order), rows):
        idx = order[b : b + rows]
        chunk = [rest[i] for i in idx]
        bucket = length_bucket(max(len(p) for p in chunk))
        if n0:
            tokens, mask = left_pad(chunk, bucket, model.config.pad_token_id or 0, rows=rows)
            batch = [place_batch(model, x) for x in (tokens, mask)]
            gen = generate_after(
                model, params, caches, prefix_mask, jnp.int32(n0), *batch, max_new_tokens
            )
            gen = np.asarray(gen)
        else:
            gen = greedy_generate(
                model, chunk, max_new_tokens, params=params, batch_size=rows, bucket=bucket
            )
        for r, i in enumerate(idx):
            out[i] = gen[r].tolist()
    return out


def _choice_task(
    model,
    spec: TaskSpec,
    examples: list[Example],
    params,
    batch_size: int,
    max_length: int,
    samples: int,
) -> dict[str, Any]:
    tok = model.tokenizer
    flat = [(e, j, ctx, cont) for e in examples for j, (ctx, cont) in enumerate(e.requests)]
    ctx_ids = _encode(tok, [f[2] for f in flat])
    cont_ids = _encode(tok, [f[3] for f in flat])
    logp, _ = score_continuations(
        model, list(zip(ctx_ids, cont_ids)), params, batch_size, max_length
    )
    hits = {"raw": 0, "per_token": 0, "per_char": 0}
    chance, shown, k = 0.0, [], 0
    outcomes, chances = [], []
    for e in examples:
        n = len(e.requests)
        lp = logp[k : k + n]
        ntok = np.asarray([len(c) for c in cont_ids[k : k + n]], np.float64)
        nchar = np.asarray([max(1, len(cont)) for _, cont in e.requests], np.float64)
        preds = {
            "raw": int(np.argmax(lp)),
            "per_token": int(np.argmax(lp / ntok)),
            "per_char": int(np.argmax(lp / nchar)),
        }
        for key, p in preds.items():
            hits[key] += p == e.gold
        chance += 1.0 / n
        outcomes.append(int(preds[spec.normalization] == e.gold))
        chances.append(1.0 / n)
        if len(shown) < samples:
            shown.append(
                {
                    "id": e.id,
                    "gold": e.gold,
                    "predicted": preds[spec.normalization],
                    "continuations": [c for _, c in e.requests],
                    "logprobs": lp.tolist(),
                    "context_tail": e.requests[e.gold][0][-160:],
                }
            )
        k += n
    n = len(examples)
    return {
        "score": hits[spec.normalization] / n,
        "chance": chance / n,
        **{f"acc_{key}": v / n for key, v in hits.items()},
        "outcomes": outcomes,
        "chances": chances,
        "samples": shown,
    }


def _exact_match_task(
    model,
    spec: TaskSpec,
    examples: list[Example],
    params,
    batch_size: int,
    max_length: int,
    samples: int,
) -> dict[str, Any]:
    tok = model.tokenizer
    keep = max_length - spec.max_new_tokens
    if keep < 1:
        raise ValueError(
            f"Task `{spec.name}`: `max_length` {max_length} leaves no room for the prompt "
            f"after {spec.max_new_tokens} generated tokens; raise `max_length`."
        )
    prompts = [ids[-keep:] for ids in _encode(tok, [e.prompt for e in examples])]
    eos = model.config.eos_token_id
    texts = []
    for ids in generate(model, prompts, spec.max_new_tokens, params, batch_size):
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        texts.append(tok.decode(ids, skip_special_tokens=True))
    correct, shown, outcomes = 0, [], []
    for e, text in zip(examples, texts):
        answer = cut_at_stop(text, spec.stop).strip()
        ok = is_correct(spec, answer, e.answers)
        correct += ok
        outcomes.append(int(ok))
        if len(shown) < samples:
            shown.append(
                {
                    "id": e.id,
                    "generation": answer,
                    "answers": list(e.answers[:5]),
                    "correct": ok,
                    "prompt_tail": e.prompt[-160:],
                }
            )
    return {
        "score": correct / len(examples),
        "exact_match": correct / len(examples),
        "outcomes": outcomes,
        "samples": shown,
    }


def evaluate_task(
    model,
    spec: TaskSpec,
    limit: int | None = None,
    params=None,
    batch_size: int = 8,
    max_length: int | None = None,
    samples: int = 3,
) -> dict[str, Any]:
    """Score one task: {"group", "metric", "score", "interval" (Wilson 95%), "n", "seconds", ...
    metric details, "outcomes" (0/1 per example, in file order; "chances" = 1 / choices for
    multiple choice), "samples"}."""
    if model.tokenizer is None:
        raise ValueError(
            f"Task `{spec.name}` needs the model's tokenizer, but this model has none "
            f"(random presets don't); load a checkpoint that ships one."
        )
    max_length = max_length or min(model.config.max_position_embeddings, 2048)
    t0 = time.perf_counter()
    examples = load_examples(spec, limit)
    score = _choice_task if spec.scoring == "choice" else _exact_match_task
    out = score(model, spec, examples, params, batch_size, max_length, samples)
    return {
        "group": spec.group,
        "metric": spec.metric,
        "n": len(examples),
        "interval": proportion(out["outcomes"]),
        "num_shots": spec.num_shots,
        **out,
        "seconds": time.perf_counter() - t0,
    }


def group_scores(task_results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group: the mean score of its evaluated tasks, their names and the examples they hold."""
    groups = {}
    for g in GROUPS:
        names = [n for n, r in task_results.items() if r["group"] == g]
        if names:
            groups[g] = {
                "score": float(np.mean([task_results[n]["score"] for n in names])),
                "tasks": names,
                "n": int(sum(task_results[n]["n"] for n in names)),
            }
    return groups


def evaluate_tasks(
    model,
    tasks: str | Sequence[str] | None = "all",
    limit: int | None = None,
    params=None,
    batch_size: int = 8,
    max_length: int | None = None,
    samples: int = 3,
    log=None,
) -> dict[str, Any]:
    """Score tasks (names or groups, see `tasks.resolve_tasks`) on `model` (or `params`).

    Args:
      tasks: task and/or group names; "all" for every task.
      limit: at most this many examples per task (the first ones in file order).
      params: parameter tree overriding `model.params` (e.g. edited weights).
      batch_size: rows per forward; max_length: token budget per request (default
        min(model context, 2048)); samples: example predictions kept per task.
      log: optional callable receiving one progress line per task.

    Returns:
      {"tasks": {name: {...}}, "groups": {group: {"score", "tasks"}}}.
    """
    results = {}
    for spec in resolve_tasks(tasks):
        results[spec.name] = evaluate_task(
            model, spec, limit, params, batch_size, max_length, samples
        )
        if log is not None:
            r = results[spec.name]
            log(
                f"  {spec.name:32s} {r['metric']:14s} {r['score']:.3f}  (n={r['n']}, "
                f"{r['seconds']:.1f}s)"
            )
    return {"tasks": results, "groups": group_scores(results)}


def _above_chance(r: dict[str, Any]) -> np.ndarray:
    return np.asarray(r["outcomes"], np.float64) - np.asarray(r["chances"], np.float64)


def with_retention(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """`after` (an `evaluate_tasks` result) with, for every task and group `before` also has:
    `baseline_score`, `retention` = after / before (None when before is 0) and its 95% interval
    (`retention_interval`, seeded bootstrap over the same examples; stratified by task for a
    group). Tasks also get `vs_baseline` (paired difference after − before with its interval and
    exact McNemar) and, for multiple choice, `chance_corrected_retention` = (after − chance) /
    (before − chance) with its interval (None when the baseline is not above chance)."""
    out = {"tasks": {}, "groups": {}}
    for name, r in after["tasks"].items():
        r = dict(r)
        b = before.get("tasks", {}).get(name)
        if b is not None:
            r["baseline_score"] = b["score"]
            r["retention"] = r["score"] / b["score"] if b["score"] > 0 else None
            if "outcomes" in r and "outcomes" in b and len(r["outcomes"]) == len(b["outcomes"]):
                r["retention_interval"] = bootstrap_ratio(r["outcomes"], b["outcomes"])
                r["vs_baseline"] = compare_paired(r["outcomes"], b["outcomes"])
                if "chances" in r:
                    above = _above_chance(b)
                    r["chance_corrected_retention"] = (
                        bootstrap_ratio(_above_chance(r), above) if above.mean() > 0 else None
                    )
        out["tasks"][name] = r
    for name, g in after["groups"].items():
        g = dict(g)
        b = before.get("groups", {}).get(name)
        if b is not None:
            g["baseline_score"] = b["score"]
            g["retention"] = g["score"] / b["score"] if b["score"] > 0 else None
            tasks = [
                (out["tasks"][t], before.get("tasks", {}).get(t))
                for t in g.get("tasks", ())
                if t in out["tasks"]
            ]
            if tasks and all(
                bt is not None and "outcomes" in at and len(at["outcomes"]) == len(bt["outcomes"])
                for at, bt in tasks
            ):
                g["retention_interval"] = stratified_ratio(
                    [at["outcomes"] for at, _ in tasks], [bt["outcomes"] for _, bt in tasks]
                )
        out["groups"][name] = g
    return out
