"""`run_evaluation`: the selected suites on one model (optionally against a baseline) -> results.

Layout of the returned dict (and of `<out_dir>/results.json`):

    model / baseline        {"source", "fingerprint"} (baseline None without one)
    recitation[NAME]        {"n", "strict", "loose", "mean_distance", "intervals", "outcomes",
                             "rows", "file", "baseline": {...same numbers...},
                             "vs_baseline": paired differences + exact McNemar}  fractions in [0, 1]
    perplexity[TEXT]        {"perplexity", "nll", "tokens", ..., "baseline": {...}}
    ndcg[TEXT]              {"ndcg", "k", "positions", "baseline_fingerprint", "cache"}
    tasks                   {"tasks": {name: {..., "score", "interval", "baseline_score",
                             "retention", "retention_interval", "vs_baseline"}},
                             "groups": {group: {"score", "baseline_score", "retention", ...}}}

Every rate carries n and a 95% interval (`kfac_mem.stats`): Wilson for shares, a seeded bootstrap
over examples for means and retentions; model-vs-baseline differences on the same examples carry
the paired interval of the difference and the exact McNemar p-value.
    timing                  seconds per suite; skipped: {suite: reason}
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kfac_mem.atomic import write_json_atomic, write_jsonl_atomic
from kfac_mem.errors import InputError
from kfac_mem.evaluation.io import read_memorized
from kfac_mem.evaluation.ndcg import ndcg_at_k
from kfac_mem.evaluation.perplexity import perplexity
from kfac_mem.evaluation.provenance import tuned_text_warnings
from kfac_mem.evaluation.recitation import paired, recitation, summary
from kfac_mem.evaluation.task_eval import evaluate_tasks, with_retention
from kfac_mem.evaluation.tasks import resolve_tasks, task_file
from kfac_mem.evaluation.text import DEFAULT_TEXT, check_text_source, windows_from_sources
from kfac_mem.manifest import run_manifest
from kfac_mem.rundir import claim
from kfac_mem.stats import fmt_diff, fmt_interval

SUITES = ("recitation", "perplexity", "ndcg", "tasks")
DEFAULT_TEXTS = (DEFAULT_TEXT,)


def parse_suites(suites: str | Sequence[str] | None) -> list[str]:
    """Suite names from a comma-separated string or list (None / "all" = every suite)."""
    if suites is None or suites == "all":
        return list(SUITES)
    names = [s.strip() for s in (suites.split(",") if isinstance(suites, str) else suites)]
    bad = [s for s in names if s and s not in SUITES]
    if bad:
        raise ValueError(f"Unknown suite(s) {bad}; choose from {list(SUITES)}.")
    return [s for s in SUITES if s in names]


@dataclasses.dataclass(frozen=True)
class EvaluationPlan:
    """What `run_evaluation` will run, checked before any suite runs (`plan_evaluation`).

    Attributes:
      suites: the suites that run, in `SUITES` order.
      skipped: {suite: why} for default suites these inputs cannot run.
      texts: the held-out text sources (perplexity, nDCG).
      warnings: one line each, e.g. a perplexity text the model was tuned on.
    """

    suites: list[str]
    skipped: dict[str, str]
    texts: list[str]
    warnings: list[str]


def plan_evaluation(
    model,
    *,
    baseline=None,
    memorized: Mapping[str, str | Sequence[dict]] | None = None,
    texts: Sequence[str] | None = None,
    suites: str | Sequence[str] | None = None,
    tasks: str | Sequence[str] | None = "all",
    window: int = 128,
) -> EvaluationPlan:
    """Check every requested suite's inputs before any suite runs (arguments as `run_evaluation`).

    `suites` given: each named suite must be able to run, else InputError naming what is missing
    (recitation: `memorized` sets; nDCG: a `baseline`; perplexity/nDCG: readable `texts`, and a
    tokenizer for text files; tasks: a tokenizer and every task's data files). `suites` None: every
    suite these inputs can run; the others are listed in `skipped` with the reason. Memorized
    files are read (token ids checked against the vocabulary) either way, and `warnings` names any
    text that is a bundled set the model was trained or fine-tuned on (`tuned_text_warnings`;
    docs/design.md §3).
    """
    explicit = suites is not None
    chosen = parse_suites(suites)
    skipped: dict[str, str] = {}

    def cannot(suite: str, why: str) -> None:
        if explicit:
            raise InputError(f"The `suites` {suite} cannot run: {why}.")
        chosen.remove(suite)
        skipped[suite] = why

    for source in (memorized or {}).values():
        if isinstance(source, str):
            read_memorized(source, vocab_size=model.config.vocab_size)
    if "recitation" in chosen and not memorized:
        cannot("recitation", "no memorized sets given (`memorized` NAME=FILE)")
    if "ndcg" in chosen and baseline is None:
        cannot("ndcg", "no unedited `baseline` given to compare rankings with")
    sources = list(texts or DEFAULT_TEXTS)
    if "perplexity" in chosen or "ndcg" in chosen:
        for source in sources:
            try:
                check_text_source(source, model.tokenizer, window, model.config.vocab_size)
            except (ValueError, FileNotFoundError) as e:
                if texts or explicit:
                    raise
                for suite in ("perplexity", "ndcg"):
                    if suite in chosen:  # e.g. the default text and a model without tokenizer
                        cannot(suite, f"the default text: {str(e).rstrip('.')}")
                break
    if "tasks" in chosen:
        specs = resolve_tasks(tasks)
        if model.tokenizer is None:
            cannot("tasks", "task prompts are text and the model has no tokenizer")
        else:
            try:
                for spec in specs:
                    for relative in spec.source.files():
                        task_file(spec, relative)
            except FileNotFoundError as e:
                cannot("tasks", str(e).rstrip("."))
    warnings = tuned_text_warnings(model, sources) if {"perplexity", "ndcg"} & set(chosen) else []
    return EvaluationPlan(chosen, skipped, sources, warnings)


def _text_name(source: str) -> str:
    base = os.path.basename(source)
    for ext in (".jsonl.gz", ".json.gz", ".jsonl", ".txt", ".npy"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def _describe(model, params) -> dict[str, Any]:
    from models.language_model import fingerprint

    return {
        "source": model.source,
        "fingerprint": fingerprint(model.params if params is None else params),
    }


def run_evaluation(
    model,
    *,
    baseline=None,
    params=None,
    baseline_params=None,
    memorized: Mapping[str, str | Sequence[dict]] | None = None,
    texts: Sequence[str] | None = None,
    suites: str | Sequence[str] | None = None,
    tasks: str | Sequence[str] | None = "all",
    limit: int | None = None,
    out_dir: str | None = None,
    batch_size: int = 8,
    window: int = 128,
    max_length: int | None = None,
    cache_dir: str | None = None,
    text_field: str = "text",
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the selected evaluation suites and (with `out_dir`) write `<out_dir>/results.json`.

    Args:
      model: the evaluated `LanguageModel`; `params` overrides its weights (e.g. an edit).
      baseline, baseline_params: the unedited reference. Either alone is enough: a baseline model
        with its own weights, or `baseline_params` on `model`'s architecture. With one, recitation
        and perplexity are also reported for the baseline, nDCG compares against it and tasks get
        `retention` = score / baseline score. nDCG is skipped without a baseline.
      memorized: {name: jsonl path or rows with `prefix_ids`/`suffix_ids`} for recitation.
      texts: held-out text sources for perplexity and nDCG (see `text.py`); default CoQA
        passages (`text.DEFAULT_TEXT`, which no demo trains on). A bundled text the model's
        provenance says it was tuned on is reported under "warnings".
      suites: subset of `SUITES`, each of which must be able to run; None: every suite these
        inputs can run (the rest are listed under "skipped"). Everything requested is checked
        before any suite runs (`plan_evaluation`). tasks: task/group names for the task suite.
      limit: at most this many rows per memorized set, windows per text, examples per task.
      batch_size: rows per forward. window: tokens per perplexity/nDCG window.
      max_length: token budget per task request. cache_dir: nDCG baseline cache ("" = none).
      text_field: the jsonl field holding the text of held-out documents.
      log: progress printer (None = silent).
    """
    say = log or (lambda _: None)
    if baseline is None and baseline_params is not None:
        baseline = model
    if baseline is not None and baseline.config.vocab_size != model.config.vocab_size:
        raise ValueError("The baseline must share the model's vocabulary (same tokenizer).")
    plan = plan_evaluation(
        model,
        baseline=baseline,
        memorized=memorized,
        texts=texts,
        suites=suites,
        tasks=tasks,
        window=window,
    )
    chosen = plan.suites
    # `out_dir` must be new, empty or an evaluation; it is locked for the run (`kfac_mem.rundir`).
    with claim(out_dir, "evaluation") if out_dir else contextlib.nullcontext():
        results: dict[str, Any] = {
            "model": _describe(model, params),
            "baseline": None if baseline is None else _describe(baseline, baseline_params),
            "suites": chosen,
            "limit": limit,
            "manifest": run_manifest(),
            "timing": {},
            "skipped": dict(plan.skipped),
            "warnings": list(plan.warnings),
        }

        def timed(suite: str, fn: Callable[[], Any]) -> None:
            t0 = time.perf_counter()
            say(f"[{suite}]")
            results[suite] = fn()
            results["timing"][suite] = time.perf_counter() - t0
            say(f"[{suite}] done in {results['timing'][suite]:.1f}s")

        if "recitation" in chosen:  # plan_evaluation checked the sets

            def run_recitation():
                out = {}
                for name, source in memorized.items():
                    rows = (
                        read_memorized(source, vocab_size=model.config.vocab_size)
                        if isinstance(source, str)
                        else list(source)
                    )
                    rows = rows[:limit] if limit else rows
                    res = recitation(model, rows, params, batch_size=batch_size)
                    if isinstance(source, str):
                        res["file"] = source
                    if baseline is not None:
                        res["baseline"] = summary(
                            recitation(
                                baseline, rows, baseline_params, batch_size, include_rows=False
                            )
                        )
                        res["vs_baseline"] = paired(res, res["baseline"])
                    ci = res["intervals"]
                    say(
                        f"  {name}: strict {fmt_interval(ci['strict'], 'rate', digits=3)}  "
                        f"loose {fmt_interval(ci['loose'], 'rate', digits=3)}  "
                        f"mean d/L {fmt_interval(ci['mean_distance'], 'mean', digits=3)}  "
                        f"(n={res['n']}, 95% intervals)"
                    )
                    out[name] = res
                return out

            timed("recitation", run_recitation)

        need_text = "perplexity" in chosen or ("ndcg" in chosen and baseline is not None)
        windows = {}
        if need_text:
            for source in plan.texts:
                name = _text_name(source)
                name = name if name not in windows else f"{name}_{len(windows)}"
                windows[name] = windows_from_sources(
                    [source],
                    model.tokenizer,
                    window,
                    model.config.eos_token_id,
                    limit,
                    text_field=text_field,
                    vocab_size=model.config.vocab_size,
                )

        if "perplexity" in chosen:

            def run_perplexity():
                out = {}
                for name, w in windows.items():
                    res = perplexity(model, w, params, batch_size)
                    if baseline is not None:
                        res["baseline"] = perplexity(baseline, w, baseline_params, batch_size)
                    say(f"  {name}: perplexity {res['perplexity']:.3f} over {res['tokens']} tokens")
                    out[name] = res
                return out

            timed("perplexity", run_perplexity)

        if "ndcg" in chosen:  # plan_evaluation checked the baseline

            def run_ndcg():
                out = {}
                for name, w in windows.items():
                    out[name] = ndcg_at_k(
                        model,
                        w,
                        baseline,
                        params,
                        baseline_params,
                        batch_size=batch_size,
                        cache_dir=cache_dir,
                    )
                    say(f"  {name}: nDCG@{out[name]['k']} {out[name]['ndcg']:.4f}")
                return out

            timed("ndcg", run_ndcg)

        if "tasks" in chosen:

            def run_tasks():
                after = evaluate_tasks(model, tasks, limit, params, batch_size, max_length, log=say)
                if baseline is None:
                    return after
                say("  baseline:")
                before = evaluate_tasks(
                    baseline, tasks, limit, baseline_params, batch_size, max_length, log=say
                )
                return with_retention(after, before)

            timed("tasks", run_tasks)

        if out_dir:
            for name, res in results.get("recitation", {}).items():
                res["rows_file"] = write_jsonl_atomic(
                    os.path.join(out_dir, f"recitation_{name}.jsonl"), res["rows"]
                )
            write_json_atomic(os.path.join(out_dir, "results.json"), results)
        return results


def _retention(r: dict[str, Any]) -> str:
    """ "  retention 0.950 [0.800, 1.100] (chance-corrected ...)" of a task or group row."""
    if r.get("retention") is None:
        return ""
    text = "  retention " + (
        fmt_interval(r["retention_interval"], "ratio", digits=3)
        if r.get("retention_interval")
        else f"{r['retention']:.3f}"
    )
    cc = r.get("chance_corrected_retention")
    if cc and cc.get("ratio") is not None:
        text += f"  chance-corrected {fmt_interval(cc, 'ratio', digits=3)}"
    return text


def format_table(results: dict[str, Any]) -> str:
    """A plain-text summary table of a `run_evaluation` result."""
    lines = []

    def base(r: dict, key: str) -> str:
        b = r.get("baseline")
        return f"  (baseline {b[key]:.3f})" if isinstance(b, dict) and key in b else ""

    def ci(r: dict, key: str, field: str) -> str:
        return fmt_interval((r.get("intervals") or {}).get(key) or {}, field, digits=3)

    for name, r in results.get("recitation", {}).items():
        lines.append(
            f"recitation  {name:28s} strict {ci(r, 'strict', 'rate')}{base(r, 'strict')}  "
            f"loose {ci(r, 'loose', 'rate')}{base(r, 'loose')}  "
            f"mean d/L {ci(r, 'mean_distance', 'mean')}  n={r['n']}"
        )
        if "vs_baseline" in r:
            v = r["vs_baseline"]
            lines.append(
                f"  vs baseline {name:26s} strict {fmt_diff(v['strict'], 1.0, 3)}; "
                f"loose {fmt_diff(v['loose'], 1.0, 3)}"
            )
    for name, r in results.get("perplexity", {}).items():
        lines.append(
            f"perplexity  {name:28s} {r['perplexity']:.3f}{base(r, 'perplexity')}  "
            f"({r['tokens']} tokens)"
        )
    for name, r in results.get("ndcg", {}).items():
        lines.append(f"ndcg@{r['k']:<6d} {name:28s} {r['ndcg']:.4f}  ({r['positions']} positions)")
    tasks = results.get("tasks")
    if tasks:
        for name, r in tasks["tasks"].items():
            extra = f"  chance {r['chance']:.3f}" if "chance" in r else ""
            score = (
                fmt_interval(r["interval"], "rate", digits=3)
                if "interval" in r
                else f"{r['score']:.3f}"
            )
            lines.append(
                f"task        {name:28s} {r['metric']:14s} {score}"
                f"{extra}{_retention(r)}  [{r['group']}, n={r['n']}]"
            )
        for name, r in tasks["groups"].items():
            lines.append(
                f"group       {name:28s} {'mean':14s} {r['score']:.3f}{_retention(r)}"
                f"  [n={r.get('n', '?')}]"
            )
    for suite, seconds in results.get("timing", {}).items():
        lines.append(f"time        {suite:28s} {seconds:.1f}s")
    for suite, why in results.get("skipped", {}).items():
        lines.append(f"skipped     {suite:28s} {why}")
    return "\n".join(lines)
