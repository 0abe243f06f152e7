"""PNG figures of an analyzer run (matplotlib `Figure` objects, no pyplot state, Agg canvas).

spectra.png       λ and μ (normalized by their maxima) and the cumulative curvature-mass curve of
                  Π per layer, with the ρ cuts
band_ratios.png   activation band strength of each set / the clean set, per layer and band, in the
                  K-FAC basis (pair-faithful Π bands) and the SVD basis (paper Fig. 2/4)
per_example.png   per layer: distribution of per-example sharpness per set, and the mean share of
                  each example's curvature in each population band
ablation.png      loss change per set when one band is removed (K-FAC bands and the random control)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from kfac_mem.atomic import write_atomic

MAX_LAYER_ROWS = 12


def _save(fig: Figure, path: str) -> str:
    return write_atomic(path, lambda f: fig.savefig(f, dpi=90, format="png"), binary=True)


def _short(site_id: str) -> str:
    parts = site_id.split(".")
    return f"L{parts[2]}.{parts[-1].replace('_proj', '')}" if len(parts) > 3 else site_id


def spectra_figure(report: dict[str, Any], arrays: dict[str, tuple], path: str) -> str:
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for i, sid in enumerate(report["layers"]):
        lam, mu = (np.maximum(np.asarray(a, np.float64), 0) for a in arrays[sid])
        color = f"C{i % 10}"
        for vals, style, label in ((lam, "-", "λ"), (mu, "--", "μ")):
            if vals.max() > 0:
                x = np.arange(1, len(vals) + 1) / len(vals)
                y = np.where(vals > 0, vals / vals.max(), np.nan)
                ax1.semilogy(x, y, style, color=color, lw=1, label=f"{_short(sid)} {label}")
        curve = report["spectrum"][sid]["mass_curve"]
        ax2.semilogx(
            curve["fraction_of_components"],
            curve["fraction_of_mass"],
            color=color,
            lw=1.2,
            label=_short(sid),
        )
    for rho in report["options"]["rhos"]:
        ax2.axhline(rho, color="gray", ls=":", lw=1)
        ax2.text(ax2.get_xlim()[0], rho, f" ρ={rho}", va="bottom", fontsize=8, color="gray")
    ax1.set(
        xlabel="eigenvalue rank / dimension",
        ylabel="eigenvalue / max",
        title="Eigenvalues of G (λ, solid) and A (μ, dashed)",
    )
    ax2.set(
        xlabel="fraction of components (descending Π = λμ)",
        ylabel="cumulative curvature mass",
        title="Curvature mass of Π",
        ylim=(0, 1.02),
    )
    ax2.legend(fontsize=7, ncol=2)
    if len(report["layers"]) <= 6:
        ax1.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def band_ratio_figure(report: dict[str, Any], path: str) -> str | None:
    clean = report["clean"]
    others = [s for s in report["sets"] if s != clean]
    if clean is None or not others:
        return None
    bases = [b for b in ("kfac", "svd") if b in report["bases"]]
    bands = [b["band"] for b in report["bands"]]
    layers = report["layers"]
    fig = Figure(figsize=(5.5 * len(bases), 3.2 * len(others)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(others), len(bases), squeeze=False))
    x = np.arange(len(layers))
    for r, name in enumerate(others):
        for c, basis in enumerate(bases):
            ax = axes[r, c]
            for b, band in enumerate(bands):
                y = [report["activations"][sid][name]["ratio_vs_clean"][basis][b] for sid in layers]
                ax.plot(x, y, "o-", label=band, lw=1.2, ms=4)
            ax.axhline(1.0, color="gray", ls=":", lw=1)
            ax.set_xticks(x, [_short(s) for s in layers], rotation=60, fontsize=7)
            title = "K-FAC (Π bands)" if basis == "kfac" else "SVD (σ bands)"
            ax.set(title=f"{name} / {clean}: {title}", ylabel="band strength ratio")
            ax.legend(fontsize=7)
    return _save(fig, path)


def per_example_figure(report: dict[str, Any], store, path: str) -> str:
    layers = report["layers"][:MAX_LAYER_ROWS]
    sets = list(report["sets"])
    bands = [b["band"] for b in report["bands"]]
    fig = Figure(figsize=(12, 2.8 * len(layers)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(layers), 2, squeeze=False))
    width = 0.8 / max(len(sets), 1)
    for r, sid in enumerate(layers):
        ax1, ax2 = axes[r]
        handles = []
        data = []
        for name in sets:
            v = store.read(f"{name}/{sid}/sharpness")
            data.append(v[np.isfinite(v)])
        ax1.boxplot(data, showfliers=True)
        ax1.set_xticks(np.arange(1, len(sets) + 1), sets, fontsize=8)
        k = report["options"]["top_k"]
        ax1.set(
            ylabel=f"top-{k} share", title=f"{_short(sid)}: per-example sharpness", ylim=(0, 1.02)
        )
        for i, name in enumerate(sets):
            share = store.read(f"{name}/{sid}/band_share")
            share = share[np.isfinite(share).all(1)]
            if not len(share):
                continue
            pos = np.arange(len(bands)) + (i - (len(sets) - 1) / 2) * width
            box = ax2.boxplot(
                [share[:, b] for b in range(len(bands))],
                positions=pos,
                widths=width * 0.9,
                patch_artist=True,
                showfliers=False,
                manage_ticks=False,
            )
            for patch in box["boxes"]:
                patch.set_facecolor(f"C{i % 10}")
            handles.append((box["boxes"][0], name))
        ax2.set_xticks(np.arange(len(bands)), bands, fontsize=8)
        ax2.set(
            ylabel="share of the example's curvature",
            title=f"{_short(sid)}: where examples' curvature lies (population Π bands)",
            ylim=(0, 1),
        )
        ax2.legend([h for h, _ in handles], [n for _, n in handles], fontsize=7)
    return _save(fig, path)


def ablation_figure(report: dict[str, Any], path: str) -> str | None:
    rows = report["ablation"]["rows"]
    if not rows:
        return None
    targets = list(dict.fromkeys(r["target"] for r in rows))[:MAX_LAYER_ROWS]
    sets = list(report["sets"])
    bands = [b["band"] for b in report["bands"]]
    fig = Figure(figsize=(10, 3.2 * len(targets)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(targets), 1, squeeze=False)[:, 0])
    width = 0.8 / max(len(sets), 1)
    for ax, target in zip(axes, targets):
        for i, name in enumerate(sets):
            for basis, hatch, alpha in (("kfac", None, 1.0), ("random", "//", 0.45)):
                y = [
                    next(
                        (
                            r["delta"][name]
                            for r in rows
                            if r["target"] == target and r["band"] == b and r["basis"] == basis
                        ),
                        np.nan,
                    )
                    for b in bands
                ]
                off = (i - (len(sets) - 1) / 2) * width
                xs = np.arange(len(bands)) * 2 + off + (0.0 if basis == "kfac" else 1.0)
                ax.bar(
                    xs,
                    y,
                    width,
                    color=f"C{i % 10}",
                    alpha=alpha,
                    hatch=hatch,
                    label=f"{name} ({'K-FAC band' if basis == 'kfac' else 'random basis'})",
                )
        ticks = np.concatenate([np.arange(len(bands)) * 2, np.arange(len(bands)) * 2 + 1])
        labels = [f"{b}\nK-FAC" for b in bands] + [f"{b}\nrandom" for b in bands]
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set(ylabel="Δ loss (nats / token)", title=f"Band ablation: {target}")
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def write_figures(out_dir: str, report: dict[str, Any], arrays: dict[str, tuple]) -> dict[str, str]:
    """Write every figure into `<out>/figures/`; returns {name: path}."""
    from kfac_mem.analysis.store import open_arrays

    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    out = {"spectra": spectra_figure(report, arrays, os.path.join(fig_dir, "spectra.png"))}
    ratio = band_ratio_figure(report, os.path.join(fig_dir, "band_ratios.png"))
    if ratio:
        out["band_ratios"] = ratio
    out["per_example"] = per_example_figure(
        report, open_arrays(out_dir), os.path.join(fig_dir, "per_example.png")
    )
    abl = ablation_figure(report, os.path.join(fig_dir, "ablation.png"))
    if abl:
        out["ablation"] = abl
    return out
