"""Eigen runs on disk: the eigenbases of every A and G of a factor run (`kfac-mem decompose`).

Layout of an eigen run directory:
  chunks/<name>/    Orbax (StandardCheckpointer), one per chunk of same-size factors:
                      eigvals [k_pad, d] (descending), eigvecs [k_pad, d, d] (columns), saved
                      straight from the stack-sharded arrays (no gather); rows ≥ count are padding
  config.yaml       the resolved command (CLI)
  metadata.json     written last: format, precision, the factor run it came from (path, model
                    fingerprint, n_tokens, mode), sites, and where each factor's eigenpairs live

Factor keys: `A:<input group id>` (one per group: gate/up and q/k/v share one A) and `G:<site id>`.
A factor is the per-position mean (sum / n_tokens), symmetrized, then decomposed as
M = U diag(w) Uᵀ with w descending. A directory without metadata.json is incomplete and refused.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from kfac_mem.atomic import after_primary_wrote, write_json_atomic
from kfac_mem.collection.store import FactorRun, site_from_dict, site_to_dict
from kfac_mem.decomposition.eigh import (
    check_finite,
    padded_size,
    precision_scope,
    stack_shards,
    stacked_eigh,
)
from kfac_mem.errors import CorruptArtifactError, NonFiniteError
from kfac_mem.manifest import run_manifest
from kfac_mem.rundir import claim
from kfac_mem.treekeys import flatten, nest
from models.partitioning import Rules
from models.sites import LinearSite

FORMAT = "kfac-mem-eigen-v1"
EKFAC_FORMAT = "kfac-mem-ekfac-v1"
METADATA = "metadata.json"
EKFAC_METADATA = "ekfac.json"
DEFAULT_CHUNK_BYTES = 512 << 20  # per device: how much of one chunk each device holds


def a_key(site: LinearSite) -> str:
    return f"A:{site.input_group}"


def g_key(site: LinearSite) -> str:
    return f"G:{site.id}"


@dataclasses.dataclass(frozen=True)
class SiteEigen:
    """Eigenbases of one linear layer W [d_out, d_in] (HF layout; Flax kernel = Wᵀ).

    Attributes:
      site: the layer.
      lam: λ [d_out], eigenvalues of G, descending (may hold tiny negatives: rounding).
      U_G: [d_out, d_out], column i is the eigenvector of λ_i.
      mu: μ [d_in], eigenvalues of A, descending.
      U_A: [d_in, d_in], column j is the eigenvector of μ_j.
    """

    site: LinearSite
    lam: np.ndarray
    U_G: np.ndarray
    mu: np.ndarray
    U_A: np.ndarray


def _factor_matrices(run: FactorRun, sites: list[LinearSite]) -> dict[str, tuple[np.ndarray, str]]:
    """Factor key -> (sum matrix, layer id used in messages), shapes checked against the sites."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    for site in sites:
        for key, table, name, d in (
            (a_key(site), run.sums.A, site.input_group, site.d_in),
            (g_key(site), run.sums.G, site.id, site.d_out),
        ):
            if key in out:
                continue
            if name not in table:
                raise ValueError(
                    f"{run.directory}: layer `{site.id}` is listed in metadata.json but "
                    f"its factor `{name}` is missing from the saved sums; recollect it."
                )
            m = table[name]
            if tuple(m.shape) != (d, d):
                raise ValueError(
                    f"{run.directory}: factor `{name}` of layer `{site.id}` has shape "
                    f"{tuple(m.shape)} but the layer is {site.d_out}x{site.d_in} (W [d_out, d_in]) so "
                    f"it needs ({d}, {d}); the sums do not belong to this layer's model."
                )
            out[key] = (m, site.id)
    return out


def _chunks(
    keys_by_dim: Mapping[int, list[str]], shards: int, itemsize: int, chunk_bytes: int
) -> list[tuple[str, int, list[str]]]:
    """Split each same-size group into chunks of ≤ shards·per_device matrices."""
    out = []
    for d in sorted(keys_by_dim):
        per_device = max(1, chunk_bytes // (d * d * itemsize))
        size = per_device * shards
        keys = keys_by_dim[d]
        for c, start in enumerate(range(0, len(keys), size)):
            out.append((f"d{d}_{c:03d}", d, keys[start : start + size]))
    return out


def _link(run: FactorRun) -> dict[str, Any]:
    meta = run.metadata
    model = meta.get("model") or {}
    return {
        "path": run.directory,
        "n_tokens": run.n_tokens,
        "mode": meta.get("mode"),
        "complete": run.complete,
        "model": {"fingerprint": model.get("fingerprint"), "source": model.get("source")},
        "corpus": meta.get("corpus"),
        "seed": meta.get("seed"),
        "accumulate_dtype": meta.get("accumulate_dtype"),
    }


def decompose_run(
    run: FactorRun,
    out_dir: str,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    precision: str = "float32",
    site_ids: Iterable[str] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    overwrite: bool = False,
) -> EigenRun:
    """Eigendecompose every A and G of `run` (or of `site_ids`) and save an eigen run.

    Everything is validated (shapes, finiteness) before anything is written; metadata.json is
    written last, so an interrupted run leaves a directory that `load_eigen` refuses.

    Args:
      run: the factor run (`kfac_mem.load_factors`).
      out_dir: output directory (created).
      mesh, rules: placement; stacks are sharded on `factor_stack`.
      precision: "float32" or "float64" (float64 enables x64 only inside this call).
      site_ids: restrict to these layers (HF ids); default all collected layers.
      chunk_bytes: per-device bytes of one stacked chunk (bounds device and host memory).
      overwrite: replace an existing eigen run in `out_dir` (never another kind of directory:
        `out_dir` must be new, empty or an eigen run, and not the factor run; `kfac_mem.rundir`).
    """
    out_dir = os.path.abspath(out_dir)
    if site_ids is None:
        sites = list(run.sites.values())
    else:
        site_ids = list(site_ids)
        missing = [s for s in site_ids if s not in run.sites]
        if missing:
            raise ValueError(
                f"Layers {missing} were never collected in {run.directory}; "
                f"collected: {sorted(run.sites)}."
            )
        sites = [run.sites[s] for s in site_ids]
    if not sites:
        raise ValueError(f"{run.directory}: the factor run lists no layers.")
    matrices = _factor_matrices(run, sites)
    # Finiteness of the sums is finiteness of the means; name the layer(s), write nothing.
    check_finite({f"{key} (layer {layer})": m for key, (m, layer) in matrices.items()})
    with claim(
        out_dir,
        "eigen",
        inputs={"run": run.directory},
        overwrite=overwrite,
        replace_needs_overwrite=True,
    ):
        shards = stack_shards(mesh, rules)
        by_dim: dict[int, list[str]] = {}
        for key, (m, _) in sorted(matrices.items()):
            by_dim.setdefault(m.shape[0], []).append(key)
        entries: dict[str, dict[str, Any]] = {}
        chunks: dict[str, dict[str, Any]] = {}
        with precision_scope(precision) as dtype:
            plan = _chunks(by_dim, shards, dtype.itemsize, chunk_bytes)
            os.makedirs(out_dir, exist_ok=True)
            if jax.process_index() == 0 and os.path.exists(os.path.join(out_dir, METADATA)):
                os.remove(os.path.join(out_dir, METADATA))  # mark incomplete while rewriting
            for name, d, keys in plan:
                stack = np.stack(
                    [
                        (np.asarray(matrices[k][0], np.float64) / run.n_tokens).astype(dtype)
                        for k in keys
                    ]
                )
                w, u = stacked_eigh(stack, mesh, rules)
                with ocp.StandardCheckpointer() as ckptr:
                    ckptr.save(
                        os.path.join(out_dir, "chunks", name),
                        {"eigvals": w, "eigvecs": u},
                        force=True,
                    )
                    ckptr.wait_until_finished()
                chunks[name] = {
                    "dim": d,
                    "count": len(keys),
                    "padded": padded_size(len(keys), shards),
                    "dtype": str(dtype),
                }
                for i, k in enumerate(keys):
                    entries[k] = {"chunk": name, "index": i, "dim": d}
                del stack, w, u
        meta = {
            "format": FORMAT,
            "precision": precision,
            "factor_run": _link(run),
            "model": _link(run)["model"],
            "sites": [site_to_dict(s) for s in sites],
            "entries": entries,
            "chunks": chunks,
            "convention": "M = U diag(w) U^T of the symmetrized per-position mean factor; w descending; "
            "eigenvectors are the columns of U",
            "stack_shards": shards,
            "manifest": run_manifest(),
        }
        write_json_atomic(os.path.join(out_dir, METADATA), meta)
        after_primary_wrote(f"kfac_mem.decomposition:{out_dir}")
        return EigenRun(out_dir)


def _read_json(path: str) -> dict[str, Any]:
    import json

    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise CorruptArtifactError(
                f"{path}: not valid JSON ({e}); the file is corrupt."
            ) from None


class EigenRun:
    """A saved eigen run (`load_eigen(path)`): per-layer eigenbases, read lazily chunk by chunk."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        path = os.path.join(self.directory, METADATA)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{self.directory}: no {METADATA}; not a (complete) eigen run "
                f"(`kfac_mem.decomposition.decompose_run` writes one)."
            )
        self.metadata = _read_json(path)
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.metadata.get('format')!r} is not {FORMAT!r}.")
        self.sites = {s["id"]: site_from_dict(s) for s in self.metadata["sites"]}
        self._cache: dict[str, dict[str, np.ndarray]] = {}
        # Where EK-FAC corrected eigenvalues are read from: an analysis output, once
        # `use_corrected` has checked it (the eigen run itself never holds them).
        self.ekfac_directory: str | None = None
        self._ekfac: dict[str, np.ndarray] | None = None

    @property
    def precision(self) -> str:
        return self.metadata["precision"]

    @property
    def factor_run(self) -> dict[str, Any]:
        return self.metadata["factor_run"]

    @property
    def model_fingerprint(self) -> str | None:
        return (self.metadata.get("model") or {}).get("fingerprint")

    def _chunk(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._cache:
            info = self.metadata["chunks"][name]
            n, d, dtype = info["padded"], info["dim"], np.dtype(info["dtype"])
            target = {"eigvals": np.empty((n, d), dtype), "eigvecs": np.empty((n, d, d), dtype)}
            path = os.path.join(self.directory, "chunks", name)
            try:
                with ocp.StandardCheckpointer() as ckptr:
                    chunk = ckptr.restore(path, target)
            except Exception as e:  # tensorstore / Orbax errors on truncated or missing files
                raise CorruptArtifactError(
                    f"{path}: eigen chunk cannot be read ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}); the eigen run is corrupt. "
                    f"Rerun `kfac-mem decompose` into a new directory."
                ) from None
            layers = [k for k, v in self.metadata["entries"].items() if v["chunk"] == name]
            ok = np.isfinite(chunk["eigvals"]).all(axis=1) & np.isfinite(chunk["eigvecs"]).all(
                axis=(1, 2)
            )
            bad = [k for k in layers if not ok[self.metadata["entries"][k]["index"]]]
            if bad:
                raise NonFiniteError(
                    f"Non-finite (NaN/Inf) eigenvalues or eigenvectors for {bad} in the eigen run "
                    f"{self.directory} (chunk {path}): the file is corrupt. Rerun "
                    f"`kfac-mem decompose` into a new directory. Nothing was written."
                )
            # Orthonormal columns have unit norm: a cheap O(d²) check that catches finite garbage.
            tol = 1e-3 if np.dtype(info["dtype"]).itemsize <= 4 else 1e-8
            dev = np.abs(np.linalg.norm(chunk["eigvecs"].astype(np.float64), axis=-2) - 1).max(-1)
            bad = [k for k in layers if dev[self.metadata["entries"][k]["index"]] > tol]
            if bad:
                raise CorruptArtifactError(
                    f"Eigenvectors of {bad} in the eigen run {self.directory} (chunk {path}) are "
                    f"not unit vectors (off by up to {float(dev.max()):.3g}): the file is corrupt. "
                    f"Rerun `kfac-mem decompose` into a new directory. Nothing was written."
                )
            self._cache[name] = chunk
        return self._cache[name]

    def factor(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(w [d], U [d, d]) of factor `key` (`A:<group>` or `G:<site>`), host numpy."""
        entry = self.metadata["entries"].get(key)
        if entry is None:
            raise KeyError(f"{self.directory}: no factor `{key}` in this eigen run.")
        chunk = self._chunk(entry["chunk"])
        i = entry["index"]
        return chunk["eigvals"][i], chunk["eigvecs"][i]

    def site(self, site_id: str) -> SiteEigen:
        """λ, U_G (from G) and μ, U_A (from the layer's input group's A) of one layer."""
        if site_id not in self.sites:
            raise KeyError(
                f"Layer `{site_id}` has no eigenbasis in {self.directory}: it was never collected "
                f"(or not decomposed). Layers available: {sorted(self.sites)}."
            )
        site = self.sites[site_id]
        lam, u_g = self.factor(g_key(site))
        mu, u_a = self.factor(a_key(site))
        return SiteEigen(site, lam, u_g, mu, u_a)

    def release(self) -> None:
        """Drop the chunks read so far (host memory)."""
        self._cache.clear()
        self._ekfac = None

    # --- EK-FAC corrected eigenvalues (hook for the analyzer) -----------------------------------

    def identity(self) -> dict[str, Any]:
        """What corrected eigenvalues computed against this run must match: its path, the model
        fingerprint and the factor run's token count and mode."""
        f = self.factor_run or {}
        return {
            "path": self.directory,
            "model_fingerprint": self.model_fingerprint,
            "factor_tokens": f.get("n_tokens"),
            "factor_mode": f.get("mode"),
        }

    def use_corrected(self, directory: str) -> dict[str, Any]:
        """Read EK-FAC corrected eigenvalues from `directory` (an analysis output holding
        ekfac.json) from now on; returns their provenance (sets, fingerprints, eigen run).
        Refused when they were computed against another eigen run or model."""
        directory = os.path.abspath(directory)
        path = os.path.join(directory, EKFAC_METADATA)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{directory}: no {EKFAC_METADATA}; pass the output directory of a "
                f"`kfac-mem analyze` run against {self.directory} (it writes ekfac/ there)."
            )
        info = _read_json(path).get("info") or {}
        theirs = info.get("eigen") or {}
        mine = self.identity()
        diffs = [
            k
            for k in ("model_fingerprint", "factor_tokens", "factor_mode")
            if theirs.get(k) != mine[k]
        ]
        if diffs:
            raise ValueError(
                f"{directory}: its EK-FAC eigenvalues were computed against the eigen run "
                f"{theirs.get('path')} ({', '.join(f'{k} {theirs.get(k)}' for k in diffs)}), not "
                f"{self.directory} ({', '.join(f'{k} {mine[k]}' for k in diffs)}); analyze "
                f"against this eigen run first."
            )
        self.ekfac_directory = directory
        self._ekfac = None
        return info

    def corrected_info(self) -> dict[str, Any] | None:
        """Provenance stored with the corrected eigenvalues in use (None when there are none)."""
        if self.ekfac_directory is None:
            return None
        return _read_json(os.path.join(self.ekfac_directory, EKFAC_METADATA)).get("info") or {}

    def corrected_sites(self) -> list[str]:
        if self.ekfac_directory is None:
            return []
        return list(_read_json(os.path.join(self.ekfac_directory, EKFAC_METADATA))["sites"])

    def corrected_eigenvalues(self, site_id: str) -> np.ndarray:
        """EK-FAC corrected eigenvalues Π [d_out, d_in] of `site_id` in this run's bases."""
        if site_id not in self.corrected_sites():
            where = self.ekfac_directory or "no analysis output was given (`ekfac`), so nothing"
            raise ValueError(
                f"{where} holds no EK-FAC corrected eigenvalues for `{site_id}` "
                f"(have: {self.corrected_sites() or 'none'}). Compute them with `kfac-mem analyze` "
                f"against this eigen run and pass its output directory as `ekfac`, or edit with "
                f"eigenvalues 'kfac'."
            )
        if self._ekfac is None:
            meta = _read_json(os.path.join(self.ekfac_directory, EKFAC_METADATA))
            target = nest(
                {
                    s: np.empty(tuple(v["shape"]), np.dtype(v["dtype"]))
                    for s, v in meta["arrays"].items()
                }
            )
            with ocp.StandardCheckpointer() as ckptr:
                restored = ckptr.restore(os.path.join(self.ekfac_directory, "ekfac"), target)
            self._ekfac = flatten(restored)
        return self._ekfac[site_id]


def save_corrected_eigenvalues(
    eigen_dir: str,
    values: Mapping[str, np.ndarray],
    out_dir: str,
    info: Mapping[str, Any] | None = None,
) -> None:
    """Store EK-FAC corrected eigenvalues computed in the bases of an eigen run (design.md §5.8).

    Args:
      eigen_dir: the eigen run the values are indexed against (never written).
      out_dir: where ekfac/ and ekfac.json go: the analysis output that computed them, never the
        eigen run. `info` gains "eigen": the run's `identity()`, which `EigenRun.use_corrected`
        checks.
      values: site id -> Π [d_out, d_in], Π_ij = E_n[(U_Gᵀ Γ_n U_A)_ij²] with i, j indexing the
        run's eigenvectors in their stored (descending) order.
      info: provenance (data set, number of examples, …), stored in ekfac.json.
    """
    run = EigenRun(eigen_dir)
    for site_id, pi in values.items():
        if site_id not in run.sites:
            raise ValueError(f"Layer `{site_id}` is not in the eigen run {run.directory}.")
        site = run.sites[site_id]
        if tuple(np.shape(pi)) != (site.d_out, site.d_in):
            raise ValueError(
                f"Corrected eigenvalues of `{site_id}` have shape {np.shape(pi)}; "
                f"expected (d_out, d_in) = ({site.d_out}, {site.d_in})."
            )
    check_finite({f"EK-FAC Π of {s}": v for s, v in values.items()})
    base = os.path.abspath(out_dir)
    if base == run.directory:
        raise ValueError(
            f"`out_dir` {out_dir} is the eigen run itself; corrected eigenvalues go into the "
            f"analysis output that computed them."
        )
    os.makedirs(base, exist_ok=True)
    meta_path = os.path.join(base, EKFAC_METADATA)
    if jax.process_index() == 0 and os.path.exists(meta_path):
        os.remove(meta_path)
    arrays = {s: np.asarray(v) for s, v in values.items()}
    target = os.path.join(base, "ekfac")
    if jax.process_index() == 0 and os.path.exists(target):
        shutil.rmtree(target)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, nest(arrays), force=True)
        ckptr.wait_until_finished()
    write_json_atomic(
        meta_path,
        {
            "format": EKFAC_FORMAT,
            "sites": sorted(arrays),
            "arrays": {
                s: {"shape": list(a.shape), "dtype": str(a.dtype)} for s, a in arrays.items()
            },
            "info": {**dict(info or {}), "eigen": run.identity()},
        },
    )


def load_eigen(path: str) -> EigenRun:
    """Read an eigen run written by `decompose_run` / `kfac-mem decompose`."""
    return EigenRun(path)
