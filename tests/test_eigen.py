"""Stacked sharded eigh and eigen runs: accuracy, sharding (no all-gather), 1 vs 8 devices,
float64, the on-disk format, and bad input (nothing written)."""

import os
import re

import jax
import numpy as np
import pytest
from factor_fixtures import random_spd, write_factor_run

from kfac_mem import load_factors
from kfac_mem.cli import main as cli_main
from kfac_mem.decomposition.eigh import (
    check_finite,
    local_rows,
    precision_scope,
    stack_shards,
    stacked_eigh,
    stacked_eigh_hlo,
)
from kfac_mem.decomposition.store import decompose_run, load_eigen, save_corrected_eigenvalues
from models import load_pretrained

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


@pytest.fixture(scope="module")
def tiny():
    return load_pretrained("tiny-olmo2")


@pytest.fixture(scope="module")
def factor_dir(tmp_path_factory, tiny):
    return write_factor_run(str(tmp_path_factory.mktemp("factors")), tiny, seed=1)


def _stack(k, d, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([random_spd(d, rng) + 1e-3 * rng.standard_normal((d, d)) for _ in range(k)])


def test_stacked_eigh_matches_numpy_descending(mesh8):
    mesh, rules = mesh8
    stack = _stack(5, 24).astype(np.float32)  # 5 does not divide 8: padded with 3 identities
    w, u = stacked_eigh(stack, mesh, rules)
    assert w.shape == (8, 24) and u.shape == (8, 24, 24)
    np.testing.assert_array_equal(local_rows(w, 8)[5:], 1.0)  # padding rows are identities
    w, u = local_rows(w, 5), local_rows(u, 5)
    for m, wi, ui in zip(stack.astype(np.float64), w, u):
        sym = 0.5 * (m + m.T)
        ref = np.linalg.eigvalsh(sym)[::-1]
        assert np.all(np.diff(wi) <= 0), "eigenvalues must be descending"
        np.testing.assert_allclose(wi, ref, atol=2e-6 * abs(ref).max())
        np.testing.assert_allclose((ui * wi) @ ui.T, sym, atol=5e-6 * abs(ref).max())
        np.testing.assert_allclose(ui.T @ ui, np.eye(24), atol=5e-6)


def test_compiled_stacked_eigh_has_no_collective(mesh8):
    mesh, rules = mesh8
    assert stack_shards(mesh, rules) == 8
    hlo = stacked_eigh_hlo(mesh, rules, k=12, d=32)
    for op in COLLECTIVES:
        assert op not in hlo, f"compiled stacked eigh contains {op}"
    # 12 matrices pad to 16: each device solves its own [2, 32, 32] block.
    assert re.search(r"f32\[2,32,32\]", hlo), "per-device block should be 2 whole matrices"
    assert not re.search(r"f32\[16,32,32\]", hlo), "the full stack must never live on one device"


def test_sharded_equals_unsharded(mesh8, mesh1):
    stack = _stack(6, 16, seed=3).astype(np.float32)
    w8, u8 = stacked_eigh(stack, *mesh8)
    w1, u1 = stacked_eigh(stack, *mesh1)
    w8, u8, w1, u1 = (local_rows(x, 6) for x in (w8, u8, w1, u1))
    np.testing.assert_allclose(w8, w1, rtol=1e-6, atol=1e-7)
    # Eigenvectors are defined up to sign: compare the projectors u uᵀ column by column.
    signs = np.sign(np.einsum("kij,kij->kj", u8, u1))
    np.testing.assert_allclose(u8 * signs[:, None, :], u1, atol=1e-5)


def test_float64_is_scoped_and_resolves_small_eigenvalues():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    vals = np.logspace(0, -10, 32)
    m = (q * vals) @ q.T
    with precision_scope("float64") as dtype:
        w, _ = stacked_eigh(m[None].astype(dtype))
        assert w.dtype == np.float64
        w = np.asarray(w)[0]
    assert not jax.config.jax_enable_x64, "x64 must be enabled only inside the scope"
    np.testing.assert_allclose(w, vals, rtol=1e-4, atol=1e-15)
    with precision_scope("float32"):
        w32 = np.asarray(stacked_eigh(m[None].astype(np.float32))[0])[0]
    assert np.abs(w32[-8:] - vals[-8:]).max() > 1e-9  # float32 cannot resolve 1e-10·λmax
    with pytest.raises(ValueError, match="precision"), precision_scope("float16"):
        pass


def test_decompose_run_roundtrip_and_links(tmp_path, factor_dir, tiny, mesh8):
    run = load_factors(factor_dir)
    eigen = decompose_run(run, str(tmp_path / "eigen"), *mesh8)
    meta = eigen.metadata
    link = eigen.factor_run
    assert link["path"] == os.path.abspath(factor_dir)
    assert link["n_tokens"] == run.n_tokens and link["mode"] == "sampled"
    assert link["model"]["fingerprint"] == tiny.fingerprint() == eigen.model_fingerprint
    # gate/up share one A, q/k/v share one A: 4 A's and 7 G's per layer.
    n_layers = tiny.config.num_layers
    assert sum(k.startswith("A:") for k in meta["entries"]) == 4 * n_layers
    assert sum(k.startswith("G:") for k in meta["entries"]) == 7 * n_layers
    loaded = load_eigen(eigen.directory)
    for site_id in ("model.layers.1.mlp.gate_proj", "model.layers.0.self_attn.k_proj"):
        e = loaded.site(site_id)
        f = run[site_id]
        for mat, w, u in ((f.G, e.lam, e.U_G), (f.A, e.mu, e.U_A)):
            np.testing.assert_allclose(
                w, np.linalg.eigvalsh(mat.astype(np.float64))[::-1], rtol=1e-4, atol=1e-6 * w[0]
            )
            np.testing.assert_allclose((u * w) @ u.T, mat, atol=1e-5 * w[0])
    up = loaded.site("model.layers.1.mlp.up_proj")
    np.testing.assert_array_equal(up.U_A, loaded.site("model.layers.1.mlp.gate_proj").U_A)


def test_chunked_eigen_run_equals_one_chunk(tmp_path, factor_dir, mesh8):
    """The path a 7B model takes: a chunk budget far below one stack splits each same-size group
    into several chunks (each padded to the 8 shards); every factor's eigenpairs equal those of
    the run that holds each group in one chunk."""
    run = load_factors(factor_dir)
    one = decompose_run(run, str(tmp_path / "one"), *mesh8)
    # A budget below one matrix: one matrix per device per chunk, 8 factors per chunk.
    many = decompose_run(run, str(tmp_path / "many"), *mesh8, chunk_bytes=1)
    dims = [c["dim"] for c in many.metadata["chunks"].values()]
    assert len(dims) > len(set(dims)), many.metadata["chunks"]  # some size spans several chunks
    assert all(c["count"] <= 8 and c["padded"] == 8 for c in many.metadata["chunks"].values())
    assert many.metadata["entries"].keys() == one.metadata["entries"].keys()
    for key in one.metadata["entries"]:
        (w1, u1), (w2, u2) = one.factor(key), many.factor(key)
        np.testing.assert_allclose(w2, w1, rtol=1e-5, atol=1e-6 * abs(w1[0]))
        # Eigenvectors are defined up to sign (and rotation within near-degenerate eigenvalues):
        # compare the factors they rebuild.
        np.testing.assert_allclose((u2 * w2) @ u2.T, (u1 * w1) @ u1.T, atol=2e-6 * abs(w1[0]))


def test_eigen_run_restores_after_other_device_count(tmp_path, factor_dir, mesh8, mesh1):
    run = load_factors(factor_dir)
    a = decompose_run(run, str(tmp_path / "e8"), *mesh8, site_ids=["model.layers.0.mlp.down_proj"])
    b = decompose_run(run, str(tmp_path / "e1"), *mesh1, site_ids=["model.layers.0.mlp.down_proj"])
    ea, eb = a.site("model.layers.0.mlp.down_proj"), b.site("model.layers.0.mlp.down_proj")
    np.testing.assert_allclose(ea.lam, eb.lam, rtol=1e-6)
    np.testing.assert_allclose(ea.mu, eb.mu, rtol=1e-6)


def test_float64_eigen_run(tmp_path, factor_dir):
    run = load_factors(factor_dir)
    eigen = decompose_run(
        run, str(tmp_path / "e64"), precision="float64", site_ids=["model.layers.0.mlp.gate_proj"]
    )
    e = load_eigen(eigen.directory).site("model.layers.0.mlp.gate_proj")
    assert e.U_G.dtype == np.float64 and eigen.precision == "float64"
    g = np.asarray(run.sums.G["model.layers.0.mlp.gate_proj"], np.float64) / run.n_tokens
    ref = np.linalg.eigvalsh(g)[::-1]
    np.testing.assert_allclose(e.lam, ref, rtol=1e-10, atol=1e-14)


def test_nonfinite_factor_named_and_nothing_written(tmp_path, tiny):
    bad = "model.layers.1.mlp.down_proj"
    fdir = write_factor_run(str(tmp_path / "f"), tiny, corrupt=bad)
    out = tmp_path / "eigen"
    with pytest.raises(ValueError, match=re.escape(bad)):
        decompose_run(load_factors(fdir), str(out))
    assert not out.exists()
    rc = cli_main(["decompose", "--factors", fdir, "--out", str(out)])
    assert rc == 2 and not out.exists()
    with pytest.raises(ValueError, match="Non-finite"):
        check_finite({"x": np.array([[np.inf]])})


def test_shape_mismatch_named_by_layer(tmp_path, tiny):
    group = "model.layers.0.mlp.gate_proj+up_proj.input"
    fdir = write_factor_run(str(tmp_path / "f"), tiny, shapes={group: 32})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj.*\(32, 32\)"):
        decompose_run(load_factors(fdir), str(tmp_path / "eigen"))
    assert not (tmp_path / "eigen").exists()


def test_cli_decompose_and_refuses_overwrite(tmp_path, factor_dir, capsys):
    out = str(tmp_path / "eigen")
    args = [
        "decompose",
        "--factors",
        factor_dir,
        "--out",
        out,
        "--layer-ids",
        "model.layers.0.mlp.gate_proj,model.layers.0.mlp.up_proj",
    ]
    assert cli_main(args) == 0
    assert "decomposed 3 factors of 2 layers" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    assert cli_main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite"]) == 0
    assert load_eigen(out).site("model.layers.0.mlp.up_proj").U_G.shape == (128, 128)


def test_incomplete_eigen_run_refused_and_ekfac_roundtrip(tmp_path, factor_dir):
    with pytest.raises(FileNotFoundError, match="not a \\(complete\\) eigen run"):
        load_eigen(str(tmp_path))
    site = "model.layers.0.mlp.gate_proj"
    eigen = decompose_run(load_factors(factor_dir), str(tmp_path / "e"), site_ids=[site])
    with pytest.raises(ValueError, match="EK-FAC"):
        eigen.corrected_eigenvalues(site)
    pi = np.random.default_rng(0).random((128, 64))
    analysis = str(tmp_path / "analysis")
    with pytest.raises(ValueError, match="expected"):
        save_corrected_eigenvalues(eigen.directory, {site: pi.T}, analysis)
    with pytest.raises(ValueError, match="eigen run itself"):
        save_corrected_eigenvalues(eigen.directory, {site: pi}, eigen.directory)
    save_corrected_eigenvalues(eigen.directory, {site: pi}, analysis, {"examples": 3})
    assert not os.path.exists(os.path.join(eigen.directory, "ekfac"))  # the eigen run is untouched
    reread = load_eigen(eigen.directory)
    with pytest.raises(ValueError, match="EK-FAC"):  # only from an analysis output named for it
        reread.corrected_eigenvalues(site)
    assert reread.use_corrected(analysis)["examples"] == 3
    np.testing.assert_array_equal(reread.corrected_eigenvalues(site), pi)
