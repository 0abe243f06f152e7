"""`run_vision_demo`: the vision demo's driver (the stages of the package docstring)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

from kfac_mem.atomic import write_json_atomic, write_text_atomic
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import select_sites
from kfac_mem.data import LabelledExamples, array_fingerprint
from kfac_mem.decomposition.store import EigenRun, decompose_run
from kfac_mem.editing import EditOptions, edit_model, write_edited_model
from kfac_mem.experiments import EditCell, edit_grid, edited_params, matched_control, sweep
from kfac_mem.experiments.stages import Stages
from kfac_mem.vision.demo.config import VisionDemoConfig
from kfac_mem.vision.demo.measure import measure
from kfac_mem.vision.demo.report import VisionRun, build_summary, format_table2, render_report
from kfac_mem.vision.demo.split import Noisy, noisy_training_set
from kfac_mem.vision.train import train_classifier
from models import load_pretrained, save_model
from models.checkpoint import is_model_checkpoint, read_model_info
from models.vision_model import VisionModel, init_vision_model


def run_vision_demo(
    preset: str | VisionDemoConfig,  # a config or a vision demo preset name (`DEMO_PRESETS`)
    out: str,
    mesh=None,
    rules=None,
    retrain: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the vision Table-2 experiment (see the package docstring); returns the summary dict."""
    log = log or (lambda m: None)
    if isinstance(preset, str):
        from kfac_mem.demo.presets import demo_config  # the registry imports this package

        config = demo_config(preset)
        if not isinstance(config, VisionDemoConfig):
            raise ValueError(f"Demo preset {preset!r} is not a vision preset.")
    else:
        config = preset
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    stage = Stages(log, digits=2, done="   {name}: {seconds:.1f} s")
    t_all = time.perf_counter()

    with stage("data"):
        noisy = noisy_training_set(config, log)
    with stage("train"):
        model, train_seconds = trained_model(
            config, noisy, os.path.join(out, "model"), mesh, rules, retrain, log
        )
    before = measure(model, model.params, noisy, validation=False)
    log(
        f"   memorized noisy labels {before['train']['noisy_label_memorized']:.1%} (selection "
        f"part {before['selection']['noisy_label_memorized']:.1%})"
    )
    with stage("collect"):
        factors = collect_factors(config, model, noisy, os.path.join(out, "factors"), log)
    with stage("decompose"):
        eigen = decompose_run(factors, os.path.join(out, "eigen"), mesh, rules, overwrite=True)
    selection = SelectionMeasure(model, noisy)
    with stage("sweep"):
        rule = config.choice_rule(before["selection"]["clean_train_accuracy"])
        rows, chosen = sweep_and_choose(config, model, eigen, selection, rule, log)
    with stage("edit"):
        kfac, svd, svd_pick, svd_rows = edit_and_control(config, model, eigen, chosen, selection)
        write_edited_model(kfac, os.path.join(out, "edited"))
    with stage("evaluate"):  # validation is looked at only now, after every choice is made
        results = {
            "before": measure(model, model.params, noisy, validation=True),
            "kfac": measure(model, kfac.params, noisy, validation=True),
            "svd": measure(model, svd.params, noisy, validation=True),
        }
        measure_posthoc(model, eigen, noisy, rows, config.projections)

    timings = {**stage.seconds, "total": round(time.perf_counter() - t_all, 2)}
    summary = build_summary(
        VisionRun(
            config=config,
            data=noisy.data,
            noisy=noisy,
            results=results,
            rows=rows,
            chosen=chosen,
            svd_rows=svd_rows,
            svd_pick=svd_pick,
            kfac_report=kfac.record["matrices"],
            svd_report=svd.record["matrices"],
            factors=factors,
            timings=timings,
            train_seconds=train_seconds,
        )
    )
    write_outputs(out, summary, log)
    return summary


def write_outputs(out: str, summary: dict[str, Any], log: Callable[[str], None]) -> None:
    """OUT/summary.json and OUT/report.md; the Table-2 layout and the targets go to `log`."""
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    table = format_table2(summary)
    write_text_atomic(os.path.join(out, "report.md"), render_report(summary, table))
    log("")
    log(table)
    log(
        f"targets (memorized to a fifth or less, validation accuracy not lower): "
        f"{'met' if summary['targets_met'] else 'NOT met'}; {out}/summary.json"
    )


def trained_model(
    config: VisionDemoConfig,
    noisy: Noisy,
    model_dir: str,
    mesh,
    rules,
    retrain: bool,
    log: Callable[[str], None],
) -> tuple[VisionModel, float | None]:
    """(model, training seconds): the ViT trained on the noisy labels, reused from `model_dir` when
    it was trained with the same settings, data and noisy labels (unless `retrain`)."""
    data = noisy.data
    identity = {
        "demo": config.to_dict(),
        "data": data.describe(),
        "noisy_labels_sha": array_fingerprint(noisy.noisy_labels),
    }
    if not retrain and is_model_checkpoint(model_dir):
        model = load_pretrained(model_dir, mesh=mesh, rules=rules)
        info = read_model_info(model_dir)["metadata"]
        if info.get("identity") == json.loads(json.dumps(identity)):
            log(f"   reusing the trained model in {model_dir}")
            return model, info.get("history", {}).get("seconds")
        log(f"   {model_dir} was trained with other settings: retraining")
    mconf = config.model_config().replace(num_classes=data.num_classes)
    model = init_vision_model(mconf, config.model_seed, mesh, rules)
    params, history = train_classifier(
        model, data.train_images, noisy.noisy_labels, config.train, log=None
    )
    model = dataclasses.replace(model, params=params, source=model_dir)
    save_model(model, model_dir, {"identity": identity, "history": history}, overwrite=True)
    return model, history.get("seconds")


def collect_factors(
    config: VisionDemoConfig, model: VisionModel, noisy: Noisy, out_dir: str, log
) -> Any:
    """K-FAC factors of the MLP matrices on the fit part's images (CLS position only)."""
    data, fit = noisy.data, noisy.fit
    mlp = select_sites(model.linear_sites(), projections=config.projections)
    fit_examples = LabelledExamples.from_arrays(
        data.train_images[fit], noisy.noisy_labels[fit], f"{data.source}:train:fit"
    )
    factors = collect(
        model,
        fit_examples,
        mlp,
        out_dir,
        CollectConfig(
            mode=config.factor_mode, seed=config.factor_seed, batch_size=config.factor_batch
        ),
        progress=False,
    )
    log(f"   {factors.n_tokens} CLS positions, {len(mlp)} matrices, {config.factor_mode}")
    return factors


@dataclasses.dataclass(frozen=True)
class SelectionMeasure:
    """The sweep's measure: noisy-label memorization and clean accuracy on the selection part."""

    model: VisionModel
    noisy: Noisy

    def __call__(self, params) -> dict[str, Any]:
        m = measure(self.model, params, self.noisy, validation=False)["selection"]
        return {
            "selection_noisy_label_memorized": m["noisy_label_memorized"],
            "selection_clean_accuracy": m["clean_train_accuracy"],
        }


def layer_sets(num_layers: int) -> dict[str, tuple[int, ...]]:
    """The swept layer sets: the first, the last, and both."""
    last = num_layers - 1
    return {"first": (0,), "last": (last,), "first+last": (0, last)}


def sweep_and_choose(
    config: VisionDemoConfig,
    model: VisionModel,
    eigen: EigenRun,
    selection: SelectionMeasure,
    rule,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, chosen): every layer set × ρ measured on the selection part, and the rule's choice."""
    sets = layer_sets(model.config.num_layers)
    names = {layers: name for name, layers in sets.items()}

    def describe(row) -> str:
        return (
            f"{names[tuple(row['layers'])]:>10} rho {row['rho']:.2f}: selection memorized "
            f"{row['selection_noisy_label_memorized']:.1%}, clean "
            f"{row['selection_clean_accuracy']:.1%}"
        )

    cells = edit_grid(list(sets.values()), [config.projections], config.rhos)
    rows = sweep(model, eigen, cells, selection, describe=describe, log=log)
    for row in rows:
        row["layer_set"] = names[tuple(row["layers"])]
        row["eligible"] = rule.violation(row) == 0
    chosen = rule.choose(rows)
    log(
        f"   chosen: layers {chosen['layers']} {'+'.join(chosen['projections'])} rho "
        f"{chosen['rho']}{'' if chosen['eligible'] else ' (no setting kept clean accuracy)'}"
    )
    return rows, chosen


def edit_and_control(
    config: VisionDemoConfig,
    model: VisionModel,
    eigen: EigenRun,
    chosen: dict[str, Any],
    selection: SelectionMeasure,
):
    """(K-FAC edit, SVD control, the SVD pick, the SVD candidates): the chosen edit, and SVD
    truncation of the same matrices with its drop matched on selection-part memorization."""
    sites = model.linear_sites()
    cell = EditCell(tuple(chosen["layers"]), tuple(config.projections), chosen["rho"])
    kfac = edit_model(model, eigen, cell.plan(sites))
    svd_pick, _, svd_rows = matched_control(
        model,
        None,
        [cell.with_knob(d) for d in config.svd_drops],
        selection,
        "selection_noisy_label_memorized",
        chosen["selection_noisy_label_memorized"],
    )
    svd = edit_model(model, None, cell.with_knob(svd_pick["drop"]).plan(sites), EditOptions("svd"))
    return kfac, svd, svd_pick, svd_rows


def measure_posthoc(
    model: VisionModel,
    eigen: EigenRun,
    noisy: Noisy,
    rows: list[dict[str, Any]],
    projections: tuple[str, ...],
) -> None:
    """Every sweep setting on all training images and validation, into `row["posthoc"]`, for the
    report only (the choice was already made on the selection part)."""
    for row in rows:
        cell = EditCell(tuple(row["layers"]), tuple(projections), row["rho"])
        m = measure(model, edited_params(model, eigen, cell), noisy, validation=True)
        row["posthoc"] = {
            "noisy_label_memorized": m["train"]["noisy_label_memorized"],
            "true_label_recovered": m["train"]["noisy_true_label_recovered"],
            "val_accuracy": m["val_accuracy"],
        }
