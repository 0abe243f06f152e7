"""kfac-mem's pipeline on an HF directory: the library calls behind `kfac-mem collect / decompose /
edit`, timed, plus the same three stages as CLI command lines (for end-to-end wall time).

Normalizations are the library's (docs/design.md §2.2): A = Σ_t a_t a_tᵀ / n and G = Σ_t g_t g_tᵀ / n
with n = B·(S−1) per batch (the last position of each window has no label and is excluded) and
g_t = ∂L/∂s_t for L the cross-entropy *summed* over the window.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.peers.measure import compile_seconds


def mesh1():
    """(mesh, rules): the default fsdp config on the first device only."""
    import jax

    from kfac_mem.sharding import make_mesh

    return make_mesh("fsdp", devices=jax.devices()[:1])


def load(hf_dir: str, mesh=None, rules=None):
    """(model, seconds) for an HF directory, placed on `mesh` (default: one device)."""
    from models import load_pretrained

    if mesh is None:
        mesh, rules = mesh1()
    t0 = time.perf_counter()
    model = load_pretrained(hf_dir, mesh=mesh, rules=rules)
    return model, time.perf_counter() - t0


def collect(
    model,
    windows_npy: str,
    site_ids: list[str],
    out_dir: str,
    batch_size: int,
    mode: str = "empirical",
    reduce: str = "step",
) -> dict:
    """Run `kfac_mem.collection.collect` once; seconds (wall, incl. the final Orbax save) and the
    part of it spent tracing/compiling (JAX monitoring events)."""
    from kfac_mem.collection.config import CollectConfig
    from kfac_mem.collection.run import collect as run_collect
    from kfac_mem.collection.sites import select_sites
    from kfac_mem.data import load_windows

    sites = select_sites(model.linear_sites(), ids=site_ids)
    windows = load_windows([windows_npy])
    config = CollectConfig(
        mode=mode, batch_size=batch_size, save_every=1 << 30, reduce=reduce, vocab_chunk=8192
    )
    c0 = compile_seconds()
    t0 = time.perf_counter()
    run = run_collect(model, windows, sites, out_dir, config, progress=False)
    wall = time.perf_counter() - t0
    return {
        "seconds": wall,
        "compile_s": compile_seconds() - c0,
        "n_tokens": run.n_tokens,
        "run": run,
    }


def io_seconds(run, scratch: str) -> dict:
    """Re-time the two disk steps inside `collect`: the final Orbax save of the sums (written
    again to `scratch`, then deleted) and the read-back that builds the returned FactorRun."""
    import shutil

    from kfac_mem.collection import store as fstore

    t0 = time.perf_counter()
    fstore.FactorRun(run.directory)
    read_s = time.perf_counter() - t0
    with fstore.checkpoint_manager(scratch) as manager:
        t0 = time.perf_counter()
        fstore.save_state(manager, 0, run.sums, dict(run.info))
        save_s = time.perf_counter() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    return {"save_s": save_s, "read_back_s": read_s}


def decompose(factor_dir: str, eigen_dir: str, precision: str = "float32", mesh=None, rules=None):
    """`decompose_run` over every factor of a run; seconds and compile seconds."""
    from kfac_mem.collection.store import load_factors
    from kfac_mem.decomposition.store import decompose_run

    if mesh is None:
        mesh, rules = mesh1()
    run = load_factors(factor_dir)
    c0 = compile_seconds()
    t0 = time.perf_counter()
    eigen = decompose_run(run, eigen_dir, mesh, rules, precision=precision, overwrite=True)
    return {
        "seconds": time.perf_counter() - t0,
        "compile_s": compile_seconds() - c0,
        "eigen": eigen,
    }


def hf_weights(hf_dir: str, site_ids: list[str]) -> dict[str, np.ndarray]:
    """W [d_out, d_in] (HF layout, float32) of each site, read straight from model.safetensors."""
    import os

    from models.safetensors_io import SafetensorsFile

    st = SafetensorsFile(os.path.join(hf_dir, "model.safetensors"))
    return {s: np.asarray(st.array(f"{s}.weight"), np.float32) for s in site_ids}


def edit(eigen_dir: str, weights: dict[str, np.ndarray], rho: float) -> dict:
    """`edit_weight` (curvature-mass selection + staircase reconstruction, float32) per matrix.

    Returns seconds (all matrices, eigen-run reads included), select_s (selection only, timed
    again separately), the edited matrices, each one's kept mass fraction and kept pair count.
    """
    from kfac_mem.decomposition.store import load_eigen
    from kfac_mem.editing.apply import EditOptions, edit_weight
    from kfac_mem.editing.selection import Spectrum, select_mass

    options = EditOptions(compute_rank=False)
    c0 = compile_seconds()
    t0 = time.perf_counter()
    eigen = load_eigen(eigen_dir)
    edited, kept, count = {}, {}, {}
    for site_id, w in weights.items():
        edited[site_id], row = edit_weight(w, rho, options, eigen.site(site_id), eigen, site_id)
        kept[site_id], count[site_id] = row["kept_mass"], row["kept"]
    seconds = time.perf_counter() - t0
    compile_s = compile_seconds() - c0
    t1 = time.perf_counter()
    for site_id in weights:
        eig = eigen.site(site_id)
        select_mass(Spectrum.kronecker(eig.lam, eig.mu), rho)
    return {
        "seconds": seconds,
        "compile_s": compile_s,
        "select_s": time.perf_counter() - t1,
        "edited": edited,
        "kept_mass": kept,
        "kept": count,
    }


def cli_commands(
    hf_dir: str,
    windows_npy: str,
    layers: list[int],
    projections: tuple[str, ...],
    batch_size: int,
    run_dir: str,
    rho: float,
    mode: str = "empirical",
) -> dict[str, list[str]]:
    """The three CLI steps (argv after `kfac-mem`), writing under `run_dir`."""
    import json
    import os

    lay = ",".join(map(str, layers))
    edit_plan = {str(i): {p: rho for p in projections if p != "down"} for i in layers}
    return {
        "collect": [
            "collect",
            "--model",
            hf_dir,
            "--data",
            windows_npy,
            "--mode",
            mode,
            "--layers",
            lay,
            "--projections",
            ",".join(projections),
            "--batch-size",
            str(batch_size),
            "--reduce",
            "step",
            "--no-progress",
            "--out",
            os.path.join(run_dir, "factors"),
        ],
        "decompose": [
            "decompose",
            "--factors",
            os.path.join(run_dir, "factors"),
            "--out",
            os.path.join(run_dir, "eigen"),
            "--overwrite",
        ],
        "edit": [
            "edit",
            "--model",
            hf_dir,
            "--eigen",
            os.path.join(run_dir, "eigen"),
            "--out",
            os.path.join(run_dir, "edited"),
            "--layers-json",
            json.dumps(edit_plan),
            "--no-rank",
            "--overwrite",
        ],
    }
