"""`kfac-mem sweep`: choose a K-FAC edit on a memorized train set, report it on held-out sets.

The experiment, declared on the harness (`edit_grid`, `sweep`, `ChoiceRule`, `matched_control`):

1. grid: every (layers, projections, ρ) of `MemorizationSweep` (`EditCell`), each applied to the
   unedited model in memory (`experiments.sweep`: `editing.apply_plan`, no checkpoint per cell);
2. measure (selection data only): greedy recitation of the memorized *train* set (strict, loose,
   mean d/L with Wilson / bootstrap 95% intervals) and perplexity of the held-out text, with its
   ratio to the unedited model's (paired bootstrap interval over windows)
   (`experiments.measures.memorization_measure`);
3. rule (`MemorizationSweep.choice_rule`): lowest train strict recitation, ties broken by lower
   perplexity, among cells with perplexity ≤ `max_perplexity_ratio` × unedited; when no cell
   meets the limit, the one closest to it;
4. controls at the chosen cell: SVD truncation of the same matrices at the drop fraction whose
   perplexity is closest to the chosen edit's (`matched_control`), and the same kept set in
   Haar-random bases (method "random", `seed`);
5. report: unedited, chosen, and each control on the train set, every held-out set and the text;
   the chosen edit against the unedited model and against each control on the same held-out
   examples (paired differences with 95% intervals, exact McNemar);
6. optionally the chosen edit, written as an edited model (`editing.edit_model`,
   `write_edited_model`) and/or an HF export (`kfac_mem.export.export_model`).

Output directory (kind "sweep", docs/design.md §5.9): results.json, report.md (and config.yaml
from the CLI), written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kfac_mem.atomic import write_json_atomic, write_text_atomic
from kfac_mem.editing import EditOptions, edit_model, write_edited_model
from kfac_mem.editing.report import markdown_rows
from kfac_mem.errors import InputError
from kfac_mem.evaluation.io import read_memorized
from kfac_mem.evaluation.perplexity import perplexity
from kfac_mem.evaluation.provenance import tuned_text_warnings
from kfac_mem.evaluation.recitation import paired
from kfac_mem.evaluation.text import DEFAULT_TEXT, check_text_source, windows_from_sources
from kfac_mem.experiments.grid import EditCell, edit_grid
from kfac_mem.experiments.measures import memorization_measure
from kfac_mem.experiments.rule import ChoiceRule, Limit
from kfac_mem.experiments.sweep import edited_params, matched_control, sweep
from kfac_mem.export import export_model
from kfac_mem.manifest import run_manifest, shown_path
from kfac_mem.rundir import check_output, claim
from kfac_mem.stats import fmt_diff, fmt_interval

__all__ = [
    "CONTROLS",
    "FORMAT",
    "MemorizationSweep",
    "format_summary",
    "report_markdown",
    "run_memorization_sweep",
]

FORMAT = "kfac-mem-sweep-v1"
CONTROLS = ("svd", "random")
TRAIN = "train"


def _projection(name: str) -> str:
    short = str(name).strip().split(".")[-1]
    return short[: -len("_proj")] if short.endswith("_proj") else short


@dataclasses.dataclass(frozen=True)
class MemorizationSweep:
    """The declaration of a memorization sweep: its grid, its choice rule and its controls.

    Attributes:
      layer_sets: sets of layer indices (0-based), each edited together, e.g. ((1, 2, 3), (2, 3)).
      projection_sets: sets of MLP projections, e.g. (("gate", "up"), ("gate", "up", "down")).
      rhos: ρ values, the fraction of curvature mass kept per matrix, each in (0, 1].
      max_perplexity_ratio: the chosen cell's perplexity may be at most this times the unedited
        model's (None: no limit).
      controls: any of "svd" (truncation matched to the chosen cell's perplexity) and "random"
        (the chosen kept set in random orthogonal bases).
      svd_drops: the SVD drop fractions, each in [0, 1), searched for the matched control.
      seed: the random-basis control's seed.
      batch_size: rows per forward / generation batch.
    """

    layer_sets: tuple[tuple[int, ...], ...]
    projection_sets: tuple[tuple[str, ...], ...]
    rhos: tuple[float, ...]
    max_perplexity_ratio: float | None = 1.3
    controls: tuple[str, ...] = CONTROLS
    svd_drops: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9)
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self):
        norm = object.__setattr__
        norm(self, "layer_sets", tuple(tuple(int(i) for i in s) for s in self.layer_sets))
        norm(
            self,
            "projection_sets",
            tuple(tuple(_projection(p) for p in s) for s in self.projection_sets),
        )
        norm(self, "rhos", tuple(float(r) for r in self.rhos))
        norm(self, "controls", tuple(self.controls))
        norm(self, "svd_drops", tuple(float(d) for d in self.svd_drops))
        for name, example in (
            ("layer_sets", "1-3,2-3"),
            ("projection_sets", "gate+up"),
            ("rhos", "0.6,0.8"),
        ):
            sets = getattr(self, name)
            if not sets or (name != "rhos" and not all(sets)):
                raise InputError(
                    f"`{name}` is empty (or holds an empty set): the grid needs at least one "
                    f"value, e.g. {example}."
                )
        bad = [r for r in self.rhos if not (math.isfinite(r) and 0 < r <= 1)]
        if bad:
            raise InputError(
                f"`rhos` {bad} outside (0, 1]: ρ is the fraction of curvature mass kept "
                f"(1 leaves a matrix untouched)."
            )
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise InputError(f"`controls` {unknown} unknown; choose from {list(CONTROLS)}.")
        if "svd" in self.controls:
            bad = [d for d in self.svd_drops if not (math.isfinite(d) and 0 <= d < 1)]
            if not self.svd_drops or bad:
                raise InputError(
                    f"`svd_drops` must be fractions of singular components dropped in [0, 1), "
                    f"got {list(self.svd_drops)}."
                )
        m = self.max_perplexity_ratio
        if m is not None and not (m > 0):
            raise InputError(f"`max_perplexity_ratio` must be > 0, got {m}.")
        if m is not None and math.isinf(m):
            norm(self, "max_perplexity_ratio", None)
        if self.batch_size < 1:
            raise InputError(f"`batch_size` must be >= 1, got {self.batch_size}.")

    def cells(self) -> list[EditCell]:
        """The grid, layers outermost, then projections, then ρ (`edit_grid`)."""
        return edit_grid(self.layer_sets, self.projection_sets, self.rhos)

    def choice_rule(self) -> ChoiceRule:
        """Lowest strict recitation of the train set, then lower perplexity, within the
        perplexity limit (closest to it when no cell meets it)."""
        limits = ()
        if self.max_perplexity_ratio is not None:
            limits = (Limit("ppl_ratio", hi=self.max_perplexity_ratio),)
        return ChoiceRule(objective=(f"strict_{TRAIN}", "ppl_ratio"), limits=limits)

    def describe_rule(self) -> str:
        limit = (
            f"perplexity ≤ {self.max_perplexity_ratio:g} × the unedited model's"
            if self.max_perplexity_ratio is not None
            else "no perplexity limit"
        )
        return (
            f"lowest strict recitation of the train set, ties broken by lower perplexity, among "
            f"cells with {limit} (when none meets it: the closest to it)"
        )

    def check(self, model, eigen) -> None:
        """Every cell names existing layers and projections of `model` that `eigen` decomposed;
        InputError naming the argument otherwise."""
        sites = model.linear_sites()
        num_layers = model.config.num_layers
        bad = sorted({i for s in self.layer_sets for i in s if not 0 <= i < num_layers})
        if bad:
            raise InputError(
                f"`layer_sets` names layers {bad}; the model has layers 0..{num_layers - 1}."
            )
        known = sorted({s.projection for s in sites})
        bad_p = sorted({p for s in self.projection_sets for p in s if p not in known})
        if bad_p:
            raise InputError(
                f"`projection_sets` names unknown projections {bad_p}; this model has {known}."
            )
        if eigen is None:
            raise InputError("`eigen` is required: the grid's K-FAC edits need an eigen run.")
        missing = sorted(
            {
                s.id
                for s in sites
                if any(s.layer in ls for ls in self.layer_sets)
                and any(s.projection in ps for ps in self.projection_sets)
                and s.id not in eigen.sites
            }
        )
        if missing:
            raise InputError(
                f"`layer_sets` × `projection_sets` include {missing[:4]}"
                f"{' ...' if len(missing) > 4 else ''}, which the eigen run `eigen` "
                f"{eigen.directory} does not have (it has {len(eigen.sites)} layers); collect and "
                f"decompose them, or choose other sets."
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "layer_sets": [list(s) for s in self.layer_sets],
            "projection_sets": [list(s) for s in self.projection_sets],
            "rhos": list(self.rhos),
            "max_perplexity_ratio": self.max_perplexity_ratio,
            "controls": list(self.controls),
            "svd_drops": list(self.svd_drops),
            "seed": self.seed,
            "batch_size": self.batch_size,
        }


def _rows(source: str | Sequence[dict], vocab_size: int, limit: int | None, arg: str) -> list:
    rows = read_memorized(source, vocab_size=vocab_size) if isinstance(source, str) else source
    rows = list(rows)[:limit] if limit else list(rows)
    if not rows:
        raise InputError(f"`{arg}` {source if isinstance(source, str) else ''}: no rows.")
    return rows


def _strip(row: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep row for results.json: per-set summaries without per-row outcomes."""
    out = dict(row)
    out["recitation"] = {
        k: {m: v for m, v in r.items() if m != "outcomes"} for k, r in row["recitation"].items()
    }
    return out


def run_memorization_sweep(
    model,
    eigen,
    spec: MemorizationSweep,
    *,
    train: str | Sequence[dict],
    heldout: Mapping[str, str | Sequence[dict]] | None = None,
    texts: Sequence[str] | None = None,
    window: int = 128,
    text_windows: int | None = 128,
    text_field: str = "text",
    limit: int | None = None,
    out_dir: str | None = None,
    edit_dir: str | None = None,
    hf_dir: str | None = None,
    export_dtype: str | None = None,
    overwrite: bool = False,
    inputs: Mapping[str, str | None] | None = None,
    warn: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the sweep (module docstring) and, with `out_dir`, write results.json and report.md.

    Args:
      model: the unedited `LanguageModel` (placed); every cell edits its parameters in memory.
      eigen: its eigen run (`load_eigen`), covering every matrix of the grid.
      spec: the grid, rule and controls.
      train: the memorized train set (jsonl path or rows with `prefix_ids` / `suffix_ids`): the
        only recitation data the choice sees.
      heldout: name -> held-out memorized set (path or rows), reported after the choice.
      texts: held-out text sources for perplexity (default `coqa`); `window` tokens per window,
        at most `text_windows` windows (None: all); `text_field` of jsonl documents.
      limit: at most this many rows per memorized set.
      out_dir: the sweep directory (new, empty or an earlier sweep, replaced only with
        `overwrite`); None: nothing is written.
      edit_dir: write the chosen edit there as an edited model (Orbax, docs/design.md §5.4).
      hf_dir: write the chosen edit there as an HF checkpoint (§5.5), tensors in `export_dtype`.
      overwrite: replace earlier outputs of the same kinds.
      inputs: argument name -> path of the caller's inputs (outputs may not overlap them).
      warn: called with each warning (one line), before the sweep runs; they are also returned.
      log: progress printer (None: silent).

    Returns the results dict of docs/design.md §5.9 (rates as fractions in [0, 1]).
    Everything (sets, text sources, grid against the model and the eigen run, output
    directories) is checked before any cell is edited.
    """
    say = log or (lambda _: None)
    t_start = time.perf_counter()
    heldout = dict(heldout or {})
    if TRAIN in heldout:
        raise InputError(f"`heldout` may not use the name {TRAIN!r} (the train set's).")
    vocab = model.config.vocab_size
    train_rows = _rows(train, vocab, limit, "train")
    held_rows = {name: _rows(src, vocab, limit, "heldout") for name, src in heldout.items()}
    sources = list(texts or [DEFAULT_TEXT])
    for source in sources:
        check_text_source(source, model.tokenizer, window, vocab)
    spec.check(model, eigen)
    inputs = dict(inputs or {})
    outputs = [
        (out_dir, "sweep", "out_dir"),
        (edit_dir, "model", "edit_dir"),
        (hf_dir, "hf-export", "hf_dir"),
    ]
    for path, kind, arg in outputs:
        if path:
            others = {a: p for p, _, a in outputs if p and a != arg}
            check_output(
                path,
                kind,
                inputs={**inputs, **others},
                overwrite=overwrite,
                replace_needs_overwrite=True,
                arg=arg,
            )
    warnings = tuned_text_warnings(model, sources)
    for w in warnings:
        (warn or say)(w)

    with contextlib.ExitStack() as stack:
        for path, kind, arg in outputs:
            if path:
                others = {a: p for p, _, a in outputs if p and a != arg}
                stack.enter_context(
                    claim(
                        path,
                        kind,
                        inputs={**inputs, **others},
                        overwrite=overwrite,
                        replace_needs_overwrite=True,
                        arg=arg,
                    )
                )
        results = _run(
            model,
            eigen,
            spec,
            train_rows,
            held_rows,
            sources,
            window,
            text_windows,
            text_field,
            say,
        )
        results["sets"] = {
            TRAIN: {"n": len(train_rows), "source": train if isinstance(train, str) else None},
            "heldout": {
                name: {"n": len(rows), "source": src if isinstance(src, str) else None}
                for (name, rows), src in zip(held_rows.items(), heldout.values())
            },
            "text": results.pop("_text"),
        }
        results["warnings"] = warnings
        results["edit"]["orbax"] = None
        results["edit"]["hf"] = None
        chosen = results.pop("_chosen_edit")
        if edit_dir:
            results["edit"]["orbax"] = write_edited_model(chosen, os.path.realpath(edit_dir))
        if hf_dir:
            results["edit"]["hf"] = export_model(
                chosen.model,
                hf_dir,
                dtype=export_dtype,
                metadata=chosen.metadata,
                overwrite=True,
                inputs=inputs,
            )
        results["timing"]["total"] = time.perf_counter() - t_start
        if out_dir:
            write_json_atomic(os.path.join(out_dir, "results.json"), results)
            write_text_atomic(os.path.join(out_dir, "report.md"), report_markdown(results))
    return results


def _run(model, eigen, spec, train_rows, held_rows, sources, window, text_windows, text_field, say):
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    windows = windows_from_sources(
        sources,
        model.tokenizer,
        window,
        model.config.eos_token_id,
        text_windows,
        text_field=text_field,
        vocab_size=model.config.vocab_size,
    )
    bs = spec.batch_size
    measure = memorization_measure(model, {TRAIN: train_rows}, windows, batch_size=bs)
    unedited = measure(model.params)
    timing["unedited"] = time.perf_counter() - t0
    say(
        f"unedited: train strict {unedited[f'strict_{TRAIN}']:.3f} (n={len(train_rows)}), "
        f"perplexity {unedited['perplexity']:.3f} on {windows.shape[0]} windows x {window}"
    )

    t0 = time.perf_counter()
    cells = spec.cells()
    say(f"sweep: {len(cells)} cells")
    rows = sweep(model, eigen, cells, measure, describe=_describe, log=say)
    rule = spec.choice_rule()
    index = rule.index(rows)
    for i, row in enumerate(rows):
        row["feasible"] = rule.violation(row) == 0
        row["chosen"] = i == index
    chosen = {"index": index, **rows[index]}
    cell = cells[index]
    timing["sweep"] = time.perf_counter() - t0
    say(f"chosen: {_describe(rows[index])}{'' if chosen['feasible'] else ' (limit not met)'}")

    t0 = time.perf_counter()
    sites = model.linear_sites()
    kfac = edit_model(model, eigen, cell.plan(sites), EditOptions(compute_rank=False))
    params = {"unedited": model.params, "kfac": kfac.params}
    labels = {
        "unedited": "unedited",
        "kfac": f"K-FAC edit: {cell.label()}, ρ = {cell.knob:g}",
    }
    controls: dict[str, Any] = {}
    if "svd" in spec.controls:
        svd_row, params["svd"], candidates = matched_control(
            model,
            None,
            [cell.with_knob(d) for d in spec.svd_drops],
            lambda p: {"perplexity": perplexity(model, windows, p, bs)["perplexity"]},
            "perplexity",
            chosen["perplexity"],
        )
        controls["svd"] = {
            "drop": svd_row["drop"],
            "target_perplexity": chosen["perplexity"],
            "candidates": candidates,
        }
        labels["svd"] = (
            f"SVD, same matrices, {svd_row['drop']:.0%} of singular components dropped "
            f"(perplexity-matched)"
        )
        say(f"SVD control: drop {svd_row['drop']:g} (perplexity closest to the chosen edit's)")
    if "random" in spec.controls:
        params["random"] = edited_params(model, eigen, cell, "random", seed=spec.seed)
        controls["random"] = {"seed": spec.seed, "rho": cell.knob}
        labels["random"] = f"random orthogonal bases, same kept set (seed {spec.seed})"
    timing["controls"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report_measure = memorization_measure(
        model, {TRAIN: train_rows, **held_rows}, windows, batch_size=bs, keep_outcomes=True
    )
    report = {}
    for name, p in params.items():
        report[name] = {"label": labels[name], **report_measure(p)}
        say(f"report: {_describe_report(name, report[name], held_rows)}")
    paired_tests = {
        s: {
            f"kfac_vs_{other}": paired(
                report["kfac"]["recitation"][s], report[other]["recitation"][s]
            )
            for other in report
            if other != "kfac"
        }
        for s in held_rows
    }
    timing["report"] = time.perf_counter() - t0
    return {
        "format": FORMAT,
        "model": {
            "source": shown_path(getattr(model, "source", None)),
            "fingerprint": model.fingerprint(),
        },
        "eigen": {
            "path": shown_path(eigen.directory),
            "precision": eigen.precision,
            "model_fingerprint": eigen.model_fingerprint,
        },
        "spec": spec.to_json(),
        "rule": {**rule.to_json(), "text": spec.describe_rule()},
        "unedited": _strip(unedited),
        "cells": [_strip(r) for r in rows],
        "chosen": _strip(chosen),
        "controls": controls,
        "report": report,
        "paired": paired_tests,
        "edit": {"plan": kfac.record["plan"], "matrices": kfac.record["matrices"]},
        "timing": timing,
        "manifest": run_manifest({"seed": spec.seed}),
        "_text": _text_info(sources, windows),
        "_chosen_edit": kfac,
    }


def _text_info(sources: Sequence[str], windows: np.ndarray) -> dict[str, Any]:
    return {
        "sources": list(sources),
        "windows": int(windows.shape[0]),
        "window_length": int(windows.shape[1]),
        "tokens": int(windows.shape[0] * (windows.shape[1] - 1)),
    }


def _describe(row: Mapping[str, Any]) -> str:
    r = row["recitation"][TRAIN]
    return (
        f"L{'+'.join(map(str, row['layers']))} {'+'.join(row['projections'])} ρ {row['rho']:g}: "
        f"train strict {fmt_interval(r['intervals']['strict'], 'rate', digits=3)} "
        f"(n={r['n']}), perplexity {row['perplexity']:.3f} "
        f"(x{fmt_interval(row['ppl_ratio_interval'], 'ratio', digits=3)})"
    )


def _describe_report(name: str, row: Mapping[str, Any], held: Mapping[str, Any]) -> str:
    parts = [
        f"{s} strict {fmt_interval(row['recitation'][s]['intervals']['strict'], 'rate', digits=3)}"
        f" (n={row['recitation'][s]['n']})"
        for s in [TRAIN, *held]
    ]
    return f"{name}: " + ", ".join(parts) + f", perplexity {row['perplexity']:.3f}"


# --- reports -------------------------------------------------------------------------------------


def _pct(interval: Mapping[str, Any] | None) -> str:
    """ "25.0 [10.2, 49.5] (2/8)" of a Wilson proportion (percent)."""
    if not interval:
        return "n/a"
    text = fmt_interval(interval, "rate", 100.0, 1)
    return f"{text} ({interval.get('k')}/{interval.get('n')})"


def _ratio(interval: Mapping[str, Any]) -> str:
    return fmt_interval(interval, "ratio", 1.0, 3)


def report_markdown(results: Mapping[str, Any]) -> str:
    """report.md: every cell, the choice, held-out results of the chosen edit and its controls,
    and the paired tests. Rates in %, 95% intervals in brackets (Wilson; ratios: paired bootstrap
    over windows)."""
    sets = results["sets"]
    held = list(sets["heldout"])
    text = sets["text"]
    lines = [
        "# kfac-mem sweep",
        "",
        f"- model: `{results['model']['source']}` (fingerprint {results['model']['fingerprint']})",
        f"- eigen run: `{results['eigen']['path']}`",
        f"- train set (choice): n = {sets[TRAIN]['n']}"
        + (f", `{sets[TRAIN]['source']}`" if sets[TRAIN]["source"] else ""),
        *(
            f"- held-out set `{name}`: n = {s['n']}" + (f", `{s['source']}`" if s["source"] else "")
            for name, s in sets["heldout"].items()
        ),
        f"- perplexity text: {', '.join(text['sources'])} ({text['windows']} windows x "
        f"{text['window_length']} tokens, {text['tokens']} predictions)",
        f"- rule: {results['rule']['text']}",
        *(f"- **warning**: {w}" for w in results.get("warnings", [])),
        "",
        "Rates in %, Wilson 95% intervals in brackets, (k/n); perplexity ratios to the unedited "
        "model with a paired bootstrap 95% interval over windows.",
        "",
        "## Every cell (train set)",
        "",
        "| # | layers | projections | ρ | train strict | train loose | perplexity | ratio | "
        "within limit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    u = results["unedited"]
    ur = u["recitation"][TRAIN]["intervals"]
    lines.append(
        f"| - | unedited | | | {_pct(ur['strict'])} | {_pct(ur.get('loose'))} | "
        f"{u['perplexity']:.3f} | 1 | |"
    )
    for i, row in enumerate(results["cells"]):
        ci = row["recitation"][TRAIN]["intervals"]
        mark = "**" if row["chosen"] else ""
        lines.append(
            f"| {mark}{i}{mark} | {'+'.join(map(str, row['layers']))} | "
            f"{'+'.join(row['projections'])} | {row['rho']:g} | {_pct(ci['strict'])} | "
            f"{_pct(ci.get('loose'))} | {row['perplexity']:.3f} | "
            f"{_ratio(row['ppl_ratio_interval'])} | {'yes' if row['feasible'] else 'no'} |"
        )
    c = results["chosen"]
    lines += [
        "",
        f"**Chosen**: cell {c['index']}: layers {'+'.join(map(str, c['layers']))}, "
        f"{'+'.join(c['projections'])}, ρ = {c['rho']:g}"
        + ("" if c["feasible"] else " (no cell met the perplexity limit: the closest one)")
        + ".",
        "",
        "## The chosen edit and its controls",
        "",
    ]
    head = ["model"] + [f"{s} strict" for s in held] + [f"{s} loose" for s in held]
    head += ["train strict", "perplexity", "ratio"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["report"].values():
        rec = row["recitation"]
        cells = [row["label"]]
        cells += [_pct(rec[s]["intervals"]["strict"]) for s in held]
        cells += [_pct(rec[s]["intervals"]["loose"]) for s in held]
        cells += [
            _pct(rec[TRAIN]["intervals"]["strict"]),
            f"{row['perplexity']:.3f}",
            _ratio(row["ppl_ratio_interval"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if "svd" in results["controls"]:
        svd = results["controls"]["svd"]
        tried = ", ".join(f"{r['drop']:g} → {r['perplexity']:.3f}" for r in svd["candidates"])
        lines += [
            "",
            f"SVD drop fractions tried (drop → perplexity; target {svd['target_perplexity']:.3f}):"
            f" {tried}.",
        ]
    if results["paired"]:
        lines += [
            "",
            "## Paired tests on the held-out sets (K-FAC edit − other, same examples)",
            "",
            "| set | against | strict: difference (pp) [95%], exact McNemar | only K-FAC / only "
            "other recites | loose: difference (pp) [95%], McNemar |",
            "|---|---|---|---|---|",
        ]
        for s, tests in results["paired"].items():
            for name, t in tests.items():
                other = name.removeprefix("kfac_vs_")
                m = t["strict"].get("mcnemar") or {}
                lines.append(
                    f"| {s} | {other} | {fmt_diff(t['strict'])} | "
                    f"{m.get('a_only', '-')} / {m.get('b_only', '-')} | {fmt_diff(t['loose'])} |"
                )
    lines += ["", "## The chosen edit, per matrix", "", *markdown_rows(results["edit"]["matrices"])]
    written = [
        f"{k}: `{v}`"
        for k, v in (("Orbax", results["edit"]["orbax"]), ("HF", results["edit"]["hf"]))
        if v
    ]
    if written:
        lines += ["", "Written: " + "; ".join(written) + "."]
    return "\n".join(lines) + "\n"


def format_summary(results: Mapping[str, Any]) -> str:
    """A few lines for the terminal: the choice, and each reported model on every set."""
    c = results["chosen"]
    lines = [
        f"chosen (cell {c['index']} of {len(results['cells'])}): {_describe(c)}"
        + ("" if c["feasible"] else "  [no cell met the perplexity limit]")
    ]
    held = list(results["sets"]["heldout"])
    for name, row in results["report"].items():
        lines.append(f"  {row['label']}")
        lines.append("    " + _describe_report(name, row, held).split(": ", 1)[1])
    for s, tests in results["paired"].items():
        for name, t in tests.items():
            lines.append(
                f"  {s}: K-FAC - {name.removeprefix('kfac_vs_')} strict {fmt_diff(t['strict'])}"
            )
    return "\n".join(lines)
