"""Apply an `EditPlan` to a parameter tree: per matrix, select, reconstruct, cast back, report.

Layouts: the curvature math uses the HF weight W = kernelᵀ [d_out, d_in] (rows ↔ G's eigenvectors,
columns ↔ A's). A Flax kernel [d_in, d_out] is transposed on the way in and out (`edit_kernel`).
Matrices are edited independently; everything is validated before any matrix is computed, and a
matrix whose value leaves it untouched (ρ ≥ 0.9999, SVD drop 0) keeps its original array object.
"""

from __future__ import annotations

import dataclasses
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kfac_mem.decomposition.eigh import PRECISIONS, precision_scope
from kfac_mem.decomposition.store import EigenRun, SiteEigen
from kfac_mem.editing.controls import random_orthogonal, site_key, svd_truncate
from kfac_mem.editing.plan import METHODS, EditPlan, Value, validate_plan
from kfac_mem.editing.reconstruct import masked_product
from kfac_mem.editing.selection import Selection, Spectrum, select_band, select_mass
from kfac_mem.validation import check_fields
from models.sites import LinearSite, get_path, set_path

EIGENVALUE_SOURCES = ("kfac", "ekfac")
# method -> what a report row's `kept_mass` is a share of (random bases carry no mass)
MEASURES = {"kfac": "curvature mass", "band": "curvature mass", "svd": "squared singular values"}


@dataclasses.dataclass(frozen=True)
class EditOptions:
    """How to edit.

    Attributes:
      method: kfac (curvature mass), svd (truncation), band (remove a Π percentile band), random
        (the kfac/band kept set in Haar-random orthogonal bases).
      eigenvalues: kfac (Π = λ μᵀ) or ekfac (EK-FAC corrected eigenvalues; the eigen run reads
        them from an analysis output after `EigenRun.use_corrected(dir)`).
      precision: working dtype of the reconstruction, float32 or float64.
      seed: random-basis seed (folded with each layer id).
      compute_rank: report the numerical rank of each edited matrix (one SVD per matrix).
    """

    method: str = "kfac"
    eigenvalues: str = "kfac"
    precision: str = "float32"
    seed: int = 0
    compute_rank: bool = True

    def __post_init__(self):
        check_fields(
            self,
            choices={
                "method": METHODS,
                "eigenvalues": EIGENVALUE_SOURCES,
                "precision": PRECISIONS,
                "compute_rank": (True, False),
            },
        )
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"`seed` must be an integer, got {self.seed!r}.")


def spectrum_for(
    eig: SiteEigen, options: EditOptions, eigen: EigenRun | None, name: str
) -> Spectrum:
    """Π of layer `name`: λ μᵀ, or the eigen run's EK-FAC corrected eigenvalues."""
    if options.eigenvalues == "ekfac":
        if eigen is None:
            raise ValueError(f"{name}: `eigenvalues` 'ekfac' needs the eigen run (`eigen`).")
        return Spectrum.dense(eigen.corrected_eigenvalues(name), name)
    return Spectrum.kronecker(eig.lam, eig.mu, name)


def select(spec: Spectrum, value: Value, name: str) -> Selection:
    """ρ -> curvature-mass selection; (lo, hi) -> everything but that percentile band."""
    if isinstance(value, tuple):
        return select_band(spec, *value, name=name)
    return select_mass(spec, value, name=name)


def numerical_rank(w: np.ndarray, dtype: np.dtype) -> int:
    """#σ > σ_max·max(m, n)·eps(dtype) (numpy.linalg.matrix_rank's default tolerance)."""
    s = np.asarray(jnp.linalg.svd(jnp.asarray(w, dtype), compute_uv=False))
    if s.size == 0 or s[0] == 0:
        return 0
    return int((s > s[0] * max(w.shape) * np.finfo(dtype).eps).sum())


def edit_weight(
    w: np.ndarray,
    value: Value,
    options: EditOptions,
    eig: SiteEigen | None = None,
    eigen: EigenRun | None = None,
    name: str = "matrix",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Edit one weight W [d_out, d_in] (HF layout); returns (W' in W's dtype, report row).

    Args:
      w: the weight, any float dtype (computed in `options.precision`, cast back).
      value: ρ, an SVD drop fraction, or a (lo, hi) band, per `options.method`.
      eig: the layer's eigenbases (not needed for svd).
      eigen: the eigen run (for EK-FAC eigenvalues).
      name: layer id for messages and the report.
    """
    w = np.asarray(w)
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "id": name,
        "method": options.method,
        "value": list(value) if isinstance(value, tuple) else value,
        "d_out": w.shape[0],
        "d_in": w.shape[1],
    }
    with precision_scope(options.precision) as dtype:
        if options.method == "svd":
            new, kept, energy = svd_truncate(w, value, dtype)
            row.update(
                kept=kept,
                components=min(w.shape),
                kept_mass=energy,
                kept_measure="squared singular values",
            )
        else:
            spec = spectrum_for(eig, options, eigen, name)
            sel = select(spec, value, name)
            u_g, u_a = eig.U_G, eig.U_A
            if options.method == "random":
                key = site_key(options.seed, name)
                u_g = random_orthogonal(jax.random.fold_in(key, 0), w.shape[0], dtype)
                u_a = random_orthogonal(jax.random.fold_in(key, 1), w.shape[1], dtype)
            new = masked_product(w, u_g, u_a, sel, dtype)
            row.update(
                kept=sel.kept,
                components=w.size,
                kept_mass=None if options.method == "random" else sel.kept_fraction,
                kept_measure=MEASURES.get(options.method),
            )
        row["kept_share"] = row["kept"] / row["components"]
        new = new.astype(w.dtype)
        w64 = w.astype(np.float64)
        row["rel_delta_fro"] = float(
            np.linalg.norm(new.astype(np.float64) - w64)
            / max(np.linalg.norm(w64), np.finfo(np.float64).tiny)
        )
        if options.compute_rank:
            row["rank"] = numerical_rank(new.astype(dtype), dtype)
    row["seconds"] = round(time.perf_counter() - t0, 4)
    return new, row


def edit_kernel(
    kernel: np.ndarray,
    value: Value,
    options: EditOptions,
    eig: SiteEigen | None = None,
    eigen: EigenRun | None = None,
    name: str = "matrix",
) -> tuple[np.ndarray, dict[str, Any]]:
    """`edit_weight` for a Flax kernel K = Wᵀ [d_in, d_out]; returns K' = W'ᵀ."""
    new, row = edit_weight(np.asarray(kernel).T, value, options, eig, eigen, name)
    return new.T, row


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _place_like(old, new: np.ndarray):
    """`new` with `old`'s sharding (each device reads its own slice; works across hosts)."""
    if isinstance(old, jax.Array):
        return jax.make_array_from_callback(new.shape, old.sharding, lambda idx: new[idx])
    return new


def check_targets(
    plan: EditPlan,
    sites: Sequence[LinearSite],
    kernels: Mapping[str, tuple],
    eigen: EigenRun | None,
    options: EditOptions,
) -> None:
    """Validate the whole plan before computing anything (errors name the layer id)."""
    validate_plan(plan, options.method)  # (`options` validated its fields on construction)
    by_id = {s.id: s for s in sites}
    for site_id in plan.targets:
        site = by_id[site_id]
        shape = tuple(kernels[site_id])
        if shape != (site.d_in, site.d_out):
            raise ValueError(
                f"{site_id}: kernel has shape {shape}, expected [d_in, d_out] = "
                f"({site.d_in}, {site.d_out})."
            )
        if options.method == "svd":
            continue
        if eigen is None:
            raise ValueError(
                f"`method` {options.method!r} needs `eigen` (an eigen run, `decompose_run`)."
            )
        if site_id not in eigen.sites:
            raise ValueError(
                f"{site_id}: this layer was never collected/decomposed in {eigen.directory} "
                f"(it has {sorted(eigen.sites)}). Collect and decompose it first, or drop it "
                f"from the plan."
            )
        theirs = eigen.sites[site_id]
        if (theirs.d_out, theirs.d_in) != (site.d_out, site.d_in):
            raise ValueError(
                f"{site_id}: the eigen run's factors are for a {theirs.d_out}x{theirs.d_in} weight "
                f"(G {theirs.d_out}², A {theirs.d_in}²) but this model's W is "
                f"{site.d_out}x{site.d_in}: the factors come from a different model (eigen run "
                f"fingerprint {eigen.model_fingerprint})."
            )
        if options.eigenvalues == "ekfac" and site_id not in eigen.corrected_sites():
            eigen.corrected_eigenvalues(site_id)  # raises the explanatory error


def apply_plan(
    params: Mapping[str, Any],
    sites: Sequence[LinearSite],
    plan: EditPlan,
    eigen: EigenRun | None,
    options: EditOptions = EditOptions(),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Edit the kernels named by `plan` in a params tree (HF-path nested dicts, kernels [in, out]).

    Returns:
      (new params tree, one report row per planned matrix: id, method, value, d_out, d_in, kept,
      components, kept_share = kept / components, kept_mass, kept_measure, rel_delta_fro =
      ‖ΔW‖_F/‖W‖_F, rank, seconds, untouched; docs/design.md §5.4). `components` counts the
      rank-one directions the method chooses among: d_out·d_in curvature components (kfac, band,
      random) or min(d_out, d_in) singular components (svd). `kept_mass` is the share of the
      method's mass kept (curvature mass Σλμ; Σσ² for svd; None for random bases), named by
      `kept_measure`.
    """
    by_id = {s.id: s for s in sites}
    unknown = [s for s in plan.targets if s not in by_id]
    if unknown:
        raise ValueError(f"Edit plan names layers {unknown} that this model does not have.")
    kernels = {s: get_path(params, by_id[s].kernel_path).shape for s in plan.targets}
    check_targets(plan, sites, kernels, eigen, options)
    out = dict(params)
    report = []
    for site_id, value in plan.targets.items():
        site = by_id[site_id]
        old = get_path(params, site.kernel_path)
        if plan.untouched(site_id, options.method):
            n = min(site.d_out, site.d_in) if options.method == "svd" else site.d_out * site.d_in
            row = {
                "id": site_id,
                "method": options.method,
                "value": value,
                "d_out": site.d_out,
                "d_in": site.d_in,
                "untouched": True,
                "kept": n,
                "components": n,
                "kept_share": 1.0,
                "kept_mass": None if options.method == "random" else 1.0,
                "kept_measure": MEASURES.get(options.method),
                "rel_delta_fro": 0.0,
            }
            if options.compute_rank:
                with precision_scope(options.precision) as dtype:
                    row["rank"] = numerical_rank(_host(old).astype(dtype), dtype)
            report.append(row)
            continue
        eig = None if options.method == "svd" else eigen.site(site_id)
        new, row = edit_kernel(_host(old), value, options, eig, eigen, site_id)
        row["untouched"] = False
        out = set_path(out, site.kernel_path, _place_like(old, new))
        report.append(row)
    return out, report
