"""report.json and report.md of an analyzer run (strict JSON, Markdown tables, figure links)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from kfac_mem.analysis.findings import fmt_effect, fmt_matrices
from kfac_mem.atomic import write_json_atomic, write_text_atomic

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _clean_json(obj: Any) -> Any:
    """Non-finite floats -> None, numpy scalars/arrays -> Python (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean_json(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int | np.integer):
        return str(int(x))
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def render_markdown(report: dict[str, Any], figures: dict[str, str], out_dir: str) -> str:
    """report.md of an analyzer run from its report dict (docs/design.md §4, §5.8): the run's
    settings and sets, what was measured, the findings, then one section per measurement
    (population spectrum, per-example curvature, activation band strength, EK-FAC, band
    ablation), figure links and the files."""
    md = _header(report)
    md += _definitions(report)
    md += _findings_section(report["findings"])
    md += _spectrum_section(report)
    md += _per_example_section(report)
    md += _activation_section(report)
    md += _ekfac_section(report)
    md += _ablation_section(report)
    if figures:
        md += ["## Figures", ""]
        for name, path in figures.items():
            md += [f"![{name}]({os.path.relpath(path, out_dir)})", ""]
    md += [
        "## Files",
        "",
        "- `report.json`: every number above and more (distributions, absolute strengths).",
        "- `arrays/`: per-example arrays (tensorstore zarr; `kfac_mem.analysis.open_arrays`).",
        f"- timing: {', '.join(f'{k} {v:.1f}' for k, v in report.get('timing', {}).items())}",
        "",
    ]
    return "\n".join(md)


def _header(report: dict[str, Any]) -> list[str]:
    """Title, model, eigen run, options, devices, the sets and any warnings."""
    opts = report["options"]
    md = ["# Sharp-vs-flat direction analysis", ""]
    md += [
        f"- model: `{report['model']['source']}` (fingerprint {report['model']['fingerprint']})",
        f"- eigen run: `{report['eigen']['path']}` (factors: {report['eigen']['factor_mode']} "
        f"labels, {report['eigen']['factor_tokens']} tokens)",
        f"- per-example labels: **{opts['mode']}**; loss positions: {opts['positions']}; "
        f"top-k = {opts['top_k']}; ρ = {', '.join(map(str, opts['rhos']))}; clean set: "
        f"{report['clean'] or 'none'}",
        f"- devices: {report['devices']['count']} (mesh {report['devices']['mesh']})",
        "",
    ]
    md += _table(
        ["set", "kind", "examples", "window", "loss positions", "source"],
        [
            [
                n,
                s["kind"],
                str(s["examples"]),
                str(s["window_length"]),
                str(s["loss_positions"]),
                f"`{s['source']}`",
            ]
            for n, s in report["sets"].items()
        ],
    )
    for w in report["warnings"]:
        md.append(f"> **Warning:** {w}")
    if report["warnings"]:
        md.append("")
    return md


def _definitions(report: dict[str, Any]) -> list[str]:
    """What each measured quantity is."""
    k = report["options"]["top_k"]
    return [
        "## What was measured",
        "",
        "- **Π** = λ_i μ_j for component u_G,i u_A,jᵀ of W [d_out, d_in] (eigen run's per-position "
        "mean factors). **Bands**: components ranked by descending Π, split at "
        + ", ".join(f"{b['band']} [{b['lo']:g}%, {b['hi']:g}%)" for b in report["bands"])
        + " of d_out·d_in (the same ranking the `band` edit method uses).",
        "- **Per-example curvature**: Γ̃_n = U_Gᵀ(Σ_t g_t a_tᵀ)U_A, formed as (g_n U_G)ᵀ(a_n U_A); "
        "g_t = ∂L_n/∂s_t with L_n the example's summed CE. **total** = ΣΓ̃² = ‖Γ_n‖_F²; "
        f"**sharpness** = share of total in the example's top-{k} components; **participation "
        "ratio** = (ΣΓ̃²)²/ΣΓ̃⁴; **band share** = share of total in each population band.",
        f"- **Idiosyncrasy** (S_n = example n's top-{k} components, c_d = #examples whose top-{k} "
        "holds d): **top overlap** = mean over pairs of |S_n ∩ S_m|/k = Σ_d c_d(c_d−1)/(N(N−1)k); "
        "**unique** = share of top entries held by no other example; **pooled sharpness** = top-k "
        "share of the set's summed profile Σ_n Γ̃_n²; **retained** = pooled / mean per-example "
        "sharpness (≪ 1: examples' sharp directions do not line up and cancel into a flat average).",
        "- **Activation band strength** (paper Fig. 2/4): mean over loss positions of ‖P_B x_t‖ "
        "of the layer input x_t; K-FAC: ‖P_B x‖² = Σ_j n_B(j)(v_jᵀx)², n_B(j) = #{i : (i, j) ∈ B} "
        "(pair-faithful); K-FAC-μ: bands over A's eigenvectors ranked by μ alone; SVD: bands over "
        "the right singular vectors of W ranked by σ. Ratio = set / clean.",
        "- **EK-FAC**: Π^EK_ij = Σ_n Γ̃_n,ij² / Σ_n T_n (T_n = loss positions of example n): the "
        "per-position scale of λ_i μ_j; averaged over sets "
        + ", ".join(report["ekfac"]["sets"])
        + ".",
        "- **Band ablation**: remove one band (the `band` edit method) and measure the mean CE (gold "
        "labels, nats/token) on every set; control: as many components in random orthogonal bases.",
        "",
    ]


def _findings_section(findings: list[dict[str, Any]]) -> list[str]:
    """Each claim's verdict with its pooled effect and per-matrix counts."""
    if not findings:
        return []
    md = [
        "## Findings (measured; compared with the paper's claim)",
        "",
        "Effect = set − clean, pooled over matrices (standardized mean difference; for "
        "activation strengths the mean log ratio), with a seeded bootstrap 95% interval over "
        "examples; the verdict is *agrees* / *contradicts* when the interval excludes 0 on "
        "the predicted / the other side, *inconclusive* when it contains 0. Matrices: the "
        "same rule per matrix. *descriptive*: a whole-set statistic without an interval "
        "(count of matrices where it goes the predicted way).",
        "",
    ]
    return md + _table(
        ["set vs clean", "prediction of the claim", "n", "effect [95%]", "matrices", "verdict"],
        [
            [
                f"{f['set']} vs {f['versus']}",
                f["claim"],
                f"{f.get('n_set', '–')} / {f.get('n_clean', '–')}",
                fmt_effect(f),
                fmt_matrices(f),
                f"**{f['verdict']}**",
            ]
            for f in findings
        ],
    )


def _spectrum_section(report: dict[str, Any]) -> list[str]:
    """§1: per layer, total mass, effective ranks, ρ cuts and band masses."""
    bands = [b["band"] for b in report["bands"]]
    header = ["layer", "d_out×d_in", "total mass (Σλ)(Σμ)", "eff. rank λ / μ"]
    header += [
        f"% comps for ρ={c['rho']:g}" for c in next(iter(report["spectrum"].values()))["rho_cuts"]
    ]
    header += [f"mass in {b}" for b in bands]
    rows = []
    for sid, s in report["spectrum"].items():
        r = [
            sid,
            f"{s['d_out']}×{s['d_in']}",
            fmt(s["total_mass"]),
            f"{fmt(s['effective_rank_lam'])} / {fmt(s['effective_rank_mu'])}",
        ]
        r += [fmt(100 * c["kept_fraction_of_components"]) for c in s["rho_cuts"]]
        r += [fmt(b["mass_fraction"]) for b in s["band_mass"]]
        rows.append(r)
    return ["## 1. Population spectrum", "", *_table(header, rows)]


def _per_example_section(report: dict[str, Any]) -> list[str]:
    """§2: per layer and set, the per-example curvature's medians, band shares, idiosyncrasy."""
    bands = [b["band"] for b in report["bands"]]
    header = ["layer", "set", "N", "median total", "median sharpness", "median PR"]
    header += [f"share {b}" for b in bands]
    header += ["top overlap", "unique", "pooled sharp.", "retained"]
    rows = []
    for sid, per_set in report["per_example"].items():
        for name, s in per_set.items():
            idio = s["idiosyncrasy"]
            r = [
                sid,
                name,
                str(s["examples"]),
                fmt(s["total"]["median"]),
                fmt(s["sharpness"]["median"]),
                fmt(s["participation_ratio"]["median"]),
            ]
            r += [fmt(v) for v in s["band_share_mean"]]
            r += [
                fmt(idio["top_overlap"]),
                fmt(idio["unique_fraction"]),
                fmt(idio["pooled_sharpness"]),
                fmt(idio["concentration_retained"]),
            ]
            rows.append(r)
    return ["## 2. Per-example curvature", "", *_table(header, rows)]


def _activation_section(report: dict[str, Any]) -> list[str]:
    """§3 (with a clean set and another set): band strength ratios to the clean set."""
    clean = report["clean"]
    if clean is None or len(report["sets"]) <= 1:
        return []
    bands = [b["band"] for b in report["bands"]]
    bases = report["bases"]
    header = ["layer", "set"] + [f"{basis} {b}" for basis in bases for b in bands]
    rows = []
    for sid, per_set in report["activations"].items():
        for name, a in per_set.items():
            if name == clean:
                continue
            rows.append(
                [sid, name] + [fmt(v) for basis in bases for v in a["ratio_vs_clean"][basis]]
            )
    return [
        f"## 3. Activation band strength, set / {clean}",
        "",
        *_table(header, rows),
        "Absolute strengths (mean ‖P_B x‖ per token) are in report.json "
        "(`activations.<layer>.<set>.strength`).",
        "",
    ]


def _ekfac_section(report: dict[str, Any]) -> list[str]:
    """§4: EK-FAC corrected eigenvalues against K-FAC's, and whether they were saved."""
    ek = report["ekfac"]
    md = ["## 4. EK-FAC corrected eigenvalues", ""]
    if not ek.get("layers"):
        return [*md, "Not computed (disabled).", ""]
    bands = [b["band"] for b in report["bands"]]
    rhos = [c["rho"] for c in next(iter(ek["layers"].values())).get("rho_cuts", [])]
    header = ["layer", "ΣΠ^EK / ΣΠ^KFAC", "Spearman(Π^EK, λμ)"]
    header += [f"EK mass in {b}" for b in bands]
    header += [f"EK mass in K-FAC ρ={r:g} set" for r in rhos]
    rows = []
    for sid, d in ek["layers"].items():
        r = [sid, fmt(d["trace_ratio_to_kfac"]), fmt(d["rank_correlation_with_kfac"])]
        r += [fmt(v) for v in d.get("band_mass_fraction", [None] * len(bands))]
        r += [fmt(c["ekfac_mass_in_kfac_kept_set"]) for c in d.get("rho_cuts", [])]
        rows.append(r)
    return [
        *md,
        *_table(header, rows),
        (
            "Saved under this analysis directory (the EK-FAC edit reads them with "
            "`EigenRun.use_corrected`)."
            if ek["saved"]
            else f"Not saved: {ek.get('not_saved_because', 'disabled')}."
        ),
        "",
    ]


def _ablation_section(report: dict[str, Any]) -> list[str]:
    """§5: the mean CE change on every set when one band is removed (and its control)."""
    abl = report["ablation"]
    md = [
        "## 5. Band ablation",
        "",
        "Baseline mean CE (nats/token): "
        + ", ".join(f"{n} {fmt(v, 4)}" for n, v in abl["baseline_loss"].items()),
        "",
    ]
    if not abl["rows"]:
        return [*md, "Not run (ablation: none).", ""]
    sets = list(report["sets"])
    header = ["removed from", "band", "basis", "components", "K-FAC mass removed"]
    header += [f"Δ {n}" for n in sets]
    rows = [
        [
            r["target"],
            r["band"],
            r["basis"],
            str(r["removed_components"]),
            fmt(r["removed_mass_fraction_mean"]),
        ]
        + [fmt(r["delta"][n], 4) for n in sets]
        for r in abl["rows"]
    ]
    return [*md, *_table(header, rows)]


def write_report(
    out_dir: str, report: dict[str, Any], spectra_arrays, figures: bool = True
) -> None:
    """report.json (strict JSON) and report.md (+ figures/) written atomically by process 0."""
    import jax

    if jax.process_index() != 0:
        return
    paths: dict[str, str] = {}
    if figures:
        from kfac_mem.analysis.figures import write_figures

        paths = write_figures(out_dir, report, spectra_arrays)
    report["figures"] = paths
    md = render_markdown(report, paths, out_dir)
    write_text_atomic(os.path.join(out_dir, REPORT_MD), md)
    write_json_atomic(os.path.join(out_dir, REPORT_JSON), _clean_json(report))


def read_report(out_dir: str) -> dict[str, Any]:
    """The report.json of an analyzer run."""
    path = os.path.join(out_dir, REPORT_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{out_dir}: no {REPORT_JSON}; not a finished analysis (run `analyze` with this "
            f"`out_dir`)."
        )
    with open(path) as f:
        return json.load(f)
