"""`analyze`: the sharp-vs-flat direction analyzer as one library call (docs/design.md §4).

Reads a placed model, an eigen run and named example sets; measures the population spectra, the
per-example curvature of every example in the K-FAC eigenbasis, activation band strengths (K-FAC
and SVD bases), EK-FAC corrected eigenvalues and band ablations; writes per-example arrays
(tensorstore zarr, batch by batch), report.json, report.md and PNG figures into `out_dir`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from kfac_mem.analysis import ekfac as ekfac_mod
from kfac_mem.analysis.ablation import band_ablation, set_loss
from kfac_mem.analysis.bands import kfac_bands
from kfac_mem.analysis.example_pass import PassResult, data_parallel, run_example_pass
from kfac_mem.analysis.findings import build_findings
from kfac_mem.analysis.options import AnalyzeOptions
from kfac_mem.analysis.report import REPORT_JSON, write_report
from kfac_mem.analysis.sets import resolve_sets
from kfac_mem.analysis.spectrum import spectrum_summary
from kfac_mem.analysis.step import right_singular_vectors, site_bases, to_host
from kfac_mem.analysis.store import ArrayWriter
from kfac_mem.analysis.summary import ratios
from kfac_mem.data import array_fingerprint
from kfac_mem.decomposition.store import EigenRun, load_eigen
from kfac_mem.editing.selection import Spectrum
from kfac_mem.evaluation.batching import length_bucket
from kfac_mem.manifest import run_manifest, shown_path
from kfac_mem.rundir import claim
from models.sites import LinearSite, get_path

FORMAT = "kfac-mem-analysis-v1"


def resolve_sites(model, eigen: EigenRun, site_ids: Sequence[str] | None) -> list[LinearSite]:
    """The analyzed layers, in the model's forward order; each must be in the eigen run."""
    by_id = {s.id: s for s in model.linear_sites()}
    if site_ids is None:
        site_ids = [s for s in by_id if s in eigen.sites]
        if not site_ids:
            raise ValueError(
                f"The eigen run {eigen.directory} has no layer of this model (it has "
                f"{sorted(eigen.sites)}); decompose factors collected on this model."
            )
    site_ids = list(site_ids)
    unknown = [s for s in site_ids if s not in by_id]
    if unknown:
        raise ValueError(f"Layers {unknown} are not linear layers of this model.")
    missing = [s for s in site_ids if s not in eigen.sites]
    if missing:
        raise ValueError(
            f"Layers {missing} have no eigenbasis in {eigen.directory}; it has "
            f"{sorted(eigen.sites)}. Collect and decompose them first, or drop them from `site_ids`."
        )
    for sid in site_ids:
        theirs, ours = eigen.sites[sid], by_id[sid]
        if (theirs.d_out, theirs.d_in) != (ours.d_out, ours.d_in):
            raise ValueError(
                f"{sid}: the eigen run's bases are for a {theirs.d_out}x{theirs.d_in} weight but this "
                f"model's W is {ours.d_out}x{ours.d_in}; the eigen run belongs to another model."
            )
    chosen = set(site_ids)
    return [s for s in model.linear_sites() if s.id in chosen]


def _warnings(model, eigen: EigenRun, options: AnalyzeOptions) -> list[str]:
    out = []
    fp = model.fingerprint()
    if eigen.model_fingerprint not in (None, fp):
        out.append(
            f"The eigen run's factors were collected on weights with fingerprint "
            f"{eigen.model_fingerprint}, but the analyzed model has {fp}: the bands describe "
            f"another model's curvature."
        )
    factor_mode = (eigen.factor_run or {}).get("mode")
    if factor_mode and factor_mode != options.mode:
        out.append(
            f"The factors were collected with {factor_mode} labels, the per-example gradients use "
            f"{options.mode} labels; EK-FAC eigenvalues mix the two."
        )
    return out


def _drop_stale_report(out_dir: str) -> None:
    """An interrupted rerun must not leave the old report looking current."""
    path = os.path.join(out_dir, REPORT_JSON)
    if jax.process_index() == 0 and os.path.exists(path):
        os.remove(path)


def analyze(
    model,
    eigen: EigenRun | str,
    sets: Mapping[str, Any],
    *,
    out_dir: str,
    clean: str | None = None,
    options: AnalyzeOptions | None = None,
    site_ids: Sequence[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the sharp-vs-flat analyzer; returns the report (also written to `out_dir`).

    Args:
      model: a `CurvatureModel` placed on a mesh (`models.load_pretrained(..., mesh=, rules=)`).
      eigen: an eigen run (`kfac-mem decompose`) or its directory (read only). EK-FAC corrected
        eigenvalues (from the clean set, or from `options.ekfac_sets` when named) are saved
        under `out_dir` (ekfac/, ekfac.json with the sets' fingerprints and the eigen run's
        identity), for `EigenRun.use_corrected(out_dir)` / `kfac-mem edit --ekfac out_dir`.
      sets: set name -> memorized-window rows, a token array [N, L], an `ExampleSet`, or a path
        (jsonl windows, text, .npy).
      out_dir: output directory (report.json, report.md, figures/, arrays/, which
        `open_arrays(out_dir)` reads back).
      clean: the reference set for activation ratios and the findings (default: a set named
        "clean" if present).
      options: `AnalyzeOptions` (default: all defaults).
      site_ids: analyzed layers (HF ids); default every layer of the eigen run.
      log: progress messages (None: silent).

    Everything is validated (sets, layers, batch size vs devices) before anything is written.
    """
    options = AnalyzeOptions() if options is None else options
    say = log if (log is not None and jax.process_index() == 0) else (lambda _m: None)
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    if isinstance(eigen, str | os.PathLike):
        eigen = load_eigen(os.fspath(eigen))
    example_sets, clean, ekfac_sets, sites = _checked_inputs(
        model, eigen, sets, clean, options, site_ids
    )
    out_dir = os.path.abspath(out_dir)
    # `out_dir` must be new, empty or an analysis (replaced only with `options.overwrite`) and not
    # an input; it is locked for the run (`kfac_mem.rundir`).
    with claim(
        out_dir,
        "analysis",
        inputs={"model": getattr(model, "source", None), "eigen": eigen.directory},
        overwrite=options.overwrite,
        replace_needs_overwrite=True,
    ):
        _drop_stale_report(out_dir)
        warnings = _warnings(model, eigen, options)
        for w in warnings:
            say(f"warning: {w}")

        t0 = time.perf_counter()
        spectra, spectra_arrays, bands, bases = _population(model, eigen, sites, options)
        timing["spectra_seconds"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        writer = ArrayWriter(out_dir)
        result = run_example_pass(
            model, sites, example_sets, bases, options, writer, ekfac_sets, say
        )
        timing["per_example_seconds"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fingerprints = {
            n: array_fingerprint(np.asarray(example_sets[n].tokens)) for n in ekfac_sets
        }
        ekfac_report = _ekfac(
            model,
            eigen,
            sites,
            result,
            spectra_arrays,
            bands,
            ekfac_sets,
            options,
            out_dir,
            fingerprints,
        )
        timing["ekfac_seconds"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        baseline, ablation_rows = _losses_and_ablation(
            model, eigen, sites, example_sets, options, writer, say
        )
        timing["ablation_seconds"] = time.perf_counter() - t0
        writer.finalize(_arrays_index(sites, example_sets, options, result.bases))
        report = {
            **_identity(model, eigen, options, clean, sites, example_sets, result.bases),
            "warnings": warnings,
            "spectrum": spectra,
            "per_example": result.per_example,
            "activations": _activations(result, example_sets, clean),
            "ekfac": ekfac_report,
            "ablation": {
                "scope": options.ablation,
                "control": options.ablation_control,
                "baseline_loss": baseline,
                "rows": ablation_rows,
            },
            "row_chunks": result.row_chunks,
            "arrays": os.path.join(out_dir, "arrays"),
        }
        report["findings"] = build_findings(report, seed=options.seed)
        for per_set in report["per_example"].values():  # the arrays are under arrays/ already
            for summary in per_set.values():
                summary.pop("values", None)
        timing["total_seconds"] = time.perf_counter() - t_start
        report["timing"] = timing
        write_report(out_dir, report, spectra_arrays, figures=options.figures)
        say(f"analysis written to {out_dir}")
        return report


def _checked_inputs(
    model,
    eigen: EigenRun,
    sets: Mapping[str, Any],
    clean: str | None,
    options: AnalyzeOptions,
    site_ids: Sequence[str] | None,
) -> tuple[dict[str, Any], str | None, tuple[str, ...], list[LinearSite]]:
    """(example sets, clean set name, EK-FAC sets, analyzed layers), every input checked (sets,
    layers, batch size against the mesh) before anything is written."""
    if model.mesh is None:
        raise ValueError("`model` must be placed on a mesh (load it with mesh=..., rules=...).")
    example_sets = resolve_sets(
        sets,
        getattr(model, "tokenizer", None),
        model.config.vocab_size,
        options.positions,
        options.seq_len,
        options.max_examples,
        eos_id=getattr(model.config, "eos_token_id", None),
    )
    # One compiled shape per length bucket, not per set (padding changes no per-example number).
    example_sets = {n: s.padded_to(length_bucket(s.seq_len)) for n, s in example_sets.items()}
    if clean is None and "clean" in example_sets:
        clean = "clean"
    if clean is not None and clean not in example_sets:
        raise ValueError(f"`clean` {clean!r} is not one of the sets {sorted(example_sets)}.")
    # EK-FAC eigenvalues come from the clean set unless sets are named: a memorized or task set
    # enters them only when asked for by name (`options.ekfac_sets`).
    ekfac_sets = options.ekfac_sets or ((clean,) if clean else ())
    unknown = [s for s in ekfac_sets if s not in example_sets]
    if unknown:
        raise ValueError(f"`ekfac_sets` {unknown} are not among the sets {sorted(example_sets)}.")
    sites = resolve_sites(model, eigen, site_ids)
    n_data = data_parallel(model)
    if options.batch_size % n_data:
        raise ValueError(
            f"`batch_size` {options.batch_size} must be a multiple of the {n_data} devices the "
            f"batch is split over (mesh {dict(model.mesh.shape)})."
        )
    return example_sets, clean, ekfac_sets, sites


def _losses_and_ablation(model, eigen, sites, example_sets, options, writer, say):
    """(baseline mean CE per set, band ablation rows); the per-example baseline CE goes into the
    arrays (`<set>/nll`)."""
    baseline, baseline_per_example = {}, {}
    for name, s in example_sets.items():
        baseline[name], per_ex = set_loss(model, model.params, s, options.eval_batch_size)
        baseline_per_example[name] = per_ex
        writer.create(
            f"{name}/nll",
            (len(s),),
            np.float32,
            options.batch_size,
            "mean CE per example (nats, gold labels)",
        )
        for start in range(0, len(s), options.batch_size):
            writer.write(f"{name}/nll", start, per_ex[start : start + options.batch_size])
    rows = band_ablation(
        model,
        eigen,
        [s.id for s in sites],
        example_sets,
        options.bands,
        baseline,
        options.ablation,
        options.ablation_control,
        options.seed,
        options.eval_batch_size,
        say,
        baseline_per_example,
    )
    return baseline, rows


def _arrays_index(sites, example_sets, options: AnalyzeOptions, bases) -> dict[str, Any]:
    """What arrays/ holds: layers, sets, bands, bases and how to read a top-component index."""
    return {
        "layers": [s.id for s in sites],
        "sets": list(example_sets),
        "bands": [b[0] for b in options.bands],
        "bases": bases,
        "top_index": "flat component index i*d_in + j into the eigen run's (descending) "
        "eigenvectors: i indexes U_G columns, j indexes U_A columns",
    }


def _identity(model, eigen, options, clean, sites, example_sets, bases) -> dict[str, Any]:
    """The report's first keys: format, model, eigen run, options, sets, devices, manifest."""
    return {
        "format": FORMAT,
        "model": {
            "source": shown_path(getattr(model, "source", "")),
            "fingerprint": model.fingerprint(),
        },
        "eigen": {
            "path": shown_path(eigen.directory),
            "model_fingerprint": eigen.model_fingerprint,
            "factor_mode": (eigen.factor_run or {}).get("mode"),
            "factor_tokens": (eigen.factor_run or {}).get("n_tokens"),
        },
        "options": _options_json(options),
        "clean": clean,
        "layers": [s.id for s in sites],
        "bands": [{"band": n, "lo": lo, "hi": hi} for n, lo, hi in options.bands],
        "bases": bases,
        "sets": {name: s.describe() for name, s in example_sets.items()},
        "devices": {"count": jax.device_count(), "mesh": dict(model.mesh.shape)},
        "manifest": run_manifest({"bootstrap": 0}),
    }


def _population(model, eigen: EigenRun, sites: Sequence[LinearSite], options: AnalyzeOptions):
    """Per layer: spectrum summary, (λ, μ), Π bands and the step's host bases."""
    spectra, arrays, bands, bases = {}, {}, {}, {}
    for site in sites:
        eig = eigen.site(site.id)
        spectra[site.id] = spectrum_summary(eig, options.rhos, options.bands)
        arrays[site.id] = (np.asarray(eig.lam), np.asarray(eig.mu))
        bands[site.id] = kfac_bands(Spectrum.kronecker(eig.lam, eig.mu, site.id), options.bands)
        svd_v = None
        if options.svd:
            w = to_host(get_path(model.params, site.kernel_path)).T  # W [d_out, d_in]
            svd_v = right_singular_vectors(w)
        bases[site.id] = site_bases(eig, bands[site.id], svd_v, options.bands)
    eigen.release()
    return spectra, arrays, bands, bases


def _ekfac(
    model,
    eigen,
    sites,
    result: PassResult,
    spectra_arrays,
    bands,
    ekfac_sets,
    options,
    out_dir,
    set_fingerprints,
) -> dict[str, Any]:
    """EK-FAC corrected eigenvalues: diagnostics, saved under the analysis output with their
    provenance (sets with fingerprints, eigen run, model)."""
    report: dict[str, Any] = {
        "saved": False,
        "sets": list(ekfac_sets),
        "normalization": ekfac_mod.NORMALIZATION,
    }
    if result.ekfac_sums is None:
        report["not_saved_because"] = (
            "no clean set to compute them from (name one, or list the sets explicitly)"
            if options.ekfac and not ekfac_sets
            else "disabled (ekfac=False)"
        )
        return report
    positions = max(result.ekfac_positions, 1.0)
    values = {sid: to_host(a) / positions for sid, a in result.ekfac_sums.items()}
    result.ekfac_sums = None
    report["positions"] = result.ekfac_positions
    report["layers"] = {
        s.id: ekfac_mod.diagnostics(values[s.id], spectra_arrays[s.id], bands[s.id], options)
        for s in sites
    }
    if not all(np.isfinite(v).all() and v.sum() > 0 for v in values.values()):
        report["not_saved_because"] = "some layer's corrected eigenvalues are all zero"
        return report
    info = {
        "analysis": out_dir,
        "sets": list(ekfac_sets),
        "set_fingerprints": set_fingerprints,
        "positions": result.ekfac_positions,
        "mode": options.mode,
        "normalization": ekfac_mod.NORMALIZATION,
        "model_fingerprint": model.fingerprint(),
    }
    ekfac_mod.save(eigen, values, info, out_dir)
    report["saved"] = True
    report["path"] = out_dir
    report["set_fingerprints"] = set_fingerprints
    return report


def _activations(result: PassResult, example_sets, clean: str | None) -> dict[str, Any]:
    """Per layer and set: absolute band strengths and, with a clean set, ratios to it."""
    out = {}
    for sid, per_set in result.strengths.items():
        row = {}
        for name in example_sets:
            entry = {"strength": per_set[name]}
            if clean is not None:
                entry["ratio_vs_clean"] = ratios(per_set[name], per_set[clean])
            row[name] = entry
        out[sid] = row
    return out


def _options_json(options: AnalyzeOptions) -> dict[str, Any]:
    d = dataclasses.asdict(options)
    d["bands"] = [list(b) for b in options.bands]
    d["rhos"] = list(options.rhos)
    d["ekfac_sets"] = list(options.ekfac_sets) if options.ekfac_sets else None
    return d
