"""`kfac-mem demo`: mine -> collect -> decompose -> analyze -> edit (sweep) -> evaluate -> report,
each stage through the same library code the CLI subcommands run, with artifacts under `out_dir`:

  model/ (only when trained here)   mined/{memorized,canaries}/   sets/{heldout,retain}.npy
  factors/   eigen/   analysis/
  edited/ (the chosen edit: Orbax model + report.json, the edit record)   report.md   summary.json   figures/
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

from kfac_mem.atomic import save_npy_atomic, write_json_atomic, write_jsonl_atomic
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import select_sites
from kfac_mem.data import Windows, array_fingerprint
from kfac_mem.decomposition.store import decompose_run
from kfac_mem.demo import measure
from kfac_mem.demo.config import DemoConfig
from kfac_mem.demo.model import demo_model
from kfac_mem.demo.sweep import chosen_cell, controls, sweep
from kfac_mem.editing import edit_model, write_edited_model
from kfac_mem.evaluation.mining import MiningConfig, mine_windows
from kfac_mem.experiments.stages import Stages


def mine_set(
    model, rows: list[dict], prefix_len: int, out_dir: str, val_fraction: float, seed: int
):
    """Run the miner on candidate windows (BOS + prefix | suffix) and write its jsonl splits."""
    windows = np.asarray([r["prefix_ids"] + r["suffix_ids"] for r in rows], np.int32)
    provenance = [(r.get("source", "demo"), i, 0) for i, r in enumerate(rows)]
    cfg = MiningConfig(
        prefix_len=prefix_len,
        suffix_len=windows.shape[1] - prefix_len,
        stride=windows.shape[1],
        val_fraction=val_fraction,
        seed=seed,
    )
    result = mine_windows(model, windows, provenance, cfg)
    for split in ("train", "validation"):
        write_jsonl_atomic(os.path.join(out_dir, f"{split}.jsonl"), result[split])
    write_json_atomic(os.path.join(out_dir, "summary.json"), result["stats"])
    return result


def write_comparison_sets(data, heldout: np.ndarray, c: DemoConfig, out_dir: str) -> None:
    """The clean sets `kfac-mem compare` needs beside the mined ones: held-out text windows (the
    report split) and retain windows (fresh training-mixture rows without memorized items)."""
    retain = np.concatenate(
        [data.batch(i, c.factor_batch, memorized=False, stream=2) for i in range(8)]
    )
    save_npy_atomic(os.path.join(out_dir, "heldout.npy"), heldout)
    save_npy_atomic(os.path.join(out_dir, "retain.npy"), retain)


def run_demo(
    config: DemoConfig, out_dir: str, mesh, rules, retrain: bool = False, log=print
) -> dict[str, Any]:
    """The LM demo end to end (model, mine, collect, decompose, analyze, sweep, edit, evaluate,
    report) into `out_dir`; returns the summary (`demo.report.write_report`)."""
    os.makedirs(out_dir, exist_ok=True)
    stage = Stages(log)
    c = config
    with stage("model"):
        model, data, provenance = demo_model(c, out_dir, mesh, rules, retrain, log)
    sites = model.linear_sites()

    with stage("mine"):
        mem, can = mine_demo_sets(model, data, c, out_dir, log)
    text, selection, report_sets = eval_splits(data, mem, can, c, out_dir)
    with stage("collect"):
        factors = collect_factors(model, data, c, os.path.join(out_dir, "factors"), log)

    with stage("decompose"):
        eigen = decompose_run(factors, os.path.join(out_dir, "eigen"), mesh, rules, overwrite=True)

    analysis: dict[str, Any] = {}
    if c.analysis:
        with stage("analyze"):
            analysis = run_analysis(model, eigen, data, mem, can, text, c, out_dir, log)

    base_quick = measure.quick(model, data, selection, model.params)
    with stage("sweep"):
        rows = sweep(model, data, eigen, selection, c, base_quick, log)
        chosen = c.choice_rule().choose(rows)
        log(
            f"   chosen: layers {chosen['layers']} {'+'.join(chosen['projections'])} rho "
            f"{chosen['rho']} ({'meets' if chosen['feasible'] else 'does NOT meet'} the selection "
            f"constraints)"
        )

    with stage("edit"):
        kfac = edit_model(model, eigen, chosen_cell(chosen).plan(sites))
        write_edited_model(kfac, os.path.join(out_dir, "edited"))
        edit_report = kfac.record["matrices"]
        variants = {
            "unedited": model.params,
            "kfac": kfac.params,
            **controls(model, eigen, chosen, selection, c, log),
        }

    with stage("evaluate"):
        results = {
            name: measure.full(model, data, report_sets, p, c.ndcg_windows)
            for name, p in variants.items()
        }

    with stage("report"):
        from kfac_mem.demo.report import write_report

        summary = write_report(
            out_dir,
            c,
            provenance,
            mem,
            can,
            factors,
            rows,
            chosen,
            results,
            analysis,
            stage.seconds,
            edit_report,
        )
    log(f"report: {os.path.join(out_dir, 'report.md')}")
    return summary


def mine_demo_sets(model, data, c: DemoConfig, out_dir: str, log) -> tuple[dict, dict]:
    """(memorized, canaries): the mixture's items the model recites, mined and split."""
    mem = mine_set(
        model,
        data.memorized_rows(),
        1 + c.mixture.prefix_len,
        os.path.join(out_dir, "mined", "memorized"),
        0.5,
        c.split_seed,
    )
    can = mine_set(
        model,
        data.canary_rows(),
        1 + c.mixture.canary_prefix_len,
        os.path.join(out_dir, "mined", "canaries"),
        1.0,
        c.split_seed,
    )
    log(
        f"   memorized passages: {mem['stats']['memorized']}/{len(data.memorized)} recited "
        f"-> {len(mem['train'])} train / {len(mem['validation'])} validation; canaries: "
        f"{can['stats']['memorized']}/{len(data.canaries)}"
    )
    return mem, can


def eval_splits(data, mem, can, c: DemoConfig, out_dir: str):
    """(held-out text [2·eval_text_windows, L], selection sets, report sets): the first halves of
    the held-out text and skill items select the edit, the second halves report it; the
    comparison sets are written under OUT/sets."""
    text = data.heldout_windows(2 * c.eval_text_windows)
    half = len(text) // 2
    write_comparison_sets(data, text[half:], c, os.path.join(out_dir, "sets"))
    items = {g: v[: 2 * c.eval_items] for g, v in data.skills.eval_items().items()}
    selection = measure.EvalSets(
        {"memorized_train": mem["train"]},
        text[:half],
        {g: v[: len(v) // 2] for g, v in items.items()},
    )
    report_sets = measure.EvalSets(
        {
            "memorized_train": mem["train"],
            "memorized_validation": mem["validation"],
            "canaries": can["validation"],
        },
        text[half:],
        {g: v[len(v) // 2 :] for g, v in items.items()},
    )
    return text, selection, report_sets


def collect_factors(model, data, c: DemoConfig, out_dir: str, log):
    """Sampled-label factors of every MLP matrix on fresh mixture rows (stream 1; the memorized
    items left out unless `factor_include_memorized`)."""
    n = c.factor_windows // c.factor_batch
    tokens = np.concatenate(
        [
            data.batch(i, c.factor_batch, memorized=c.factor_include_memorized, stream=1)
            for i in range(n)
        ]
    )
    windows = Windows(
        tokens,
        ("demo-mixture:stream1" + ("" if c.factor_include_memorized else ":no-memorized"),),
        array_fingerprint(tokens),
    )
    mlp = select_sites(model.linear_sites(), projections=["gate", "up", "down"])
    factors = collect(
        model,
        windows,
        mlp,
        out_dir,
        CollectConfig(mode=c.factor_mode, seed=c.seed, batch_size=c.factor_batch),
        progress=False,
    )
    log(f"   {factors.n_tokens:,} positions, {len(mlp)} matrices, mode {c.factor_mode}")
    return factors


def run_analysis(
    model, eigen, data, mem, can, text, c: DemoConfig, out_dir: str, log=print
) -> dict[str, Any]:
    """The analyzer on memorized passages, canaries, clean held-out text and the skills' examples
    (all collected MLP matrices), through `kfac_mem.analysis.analyze` (what `kfac-mem analyze` runs)."""
    from kfac_mem.analysis import AnalyzeOptions, analyze

    n = c.analysis_examples
    sets: dict[str, Any] = {"memorized": mem["train"][:n], "canaries": can["validation"][:n]}
    for group, items in data.skills.eval_items().items():
        rows = [
            {
                "prefix_ids": [data.bos, *data.encode(it.prompt)],
                "suffix_ids": list(data.encode(it.answer)),
            }
            for it in items
        ]
        # The analyzer batches fixed-length windows: keep the most common (prefix, answer) length.
        shape = collections.Counter(
            (len(r["prefix_ids"]), len(r["suffix_ids"])) for r in rows
        ).most_common(1)[0][0]
        sets[group] = [r for r in rows if (len(r["prefix_ids"]), len(r["suffix_ids"])) == shape][:n]
    sets = {k: v for k, v in sets.items() if len(v)}
    sets["clean"] = text[:n]
    options = AnalyzeOptions(
        mode=c.factor_mode,
        seed=c.seed,
        batch_size=max(8, c.factor_batch // 2),
        overwrite=True,
        progress=False,
    )
    return analyze(
        model,
        eigen,
        sets,
        out_dir=os.path.join(out_dir, "analysis"),
        clean="clean",
        options=options,
        log=log,
    )
