"""The curvature-mass edit and its controls: selection against a brute-force sort-and-cumsum,
reconstruction against the dense formula, invariances, layouts, sharding, HF export, bad input."""

import json
import os

import jax
import numpy as np
import pytest
import yaml
from edit_reference import (
    assert_edit_matches_up_to_ties,
    brute_force_band,
    brute_force_mask,
    masked_reference,
)
from factor_fixtures import write_factor_run

from kfac_mem import load_factors
from kfac_mem.cli import main as cli_main
from kfac_mem.decomposition.eigh import precision_scope
from kfac_mem.decomposition.store import (
    SiteEigen,
    decompose_run,
    load_eigen,
    save_corrected_eigenvalues,
)
from kfac_mem.editing import (
    EditOptions,
    Spectrum,
    apply_plan,
    edit_weight,
    parse_plan,
    plan_from_json,
    reconstruct,
    select_band,
    select_mass,
)
from kfac_mem.editing.reconstruct import masked_product
from kfac_mem.editing.selection import kronecker_curvature, staircase_by_count
from models import export_hf, load_pretrained
from models.language_model import param_shardings
from models.sites import decoder_sites, get_path

GATE0 = "model.layers.0.mlp.gate_proj"
RHOS = (1e-4, 0.05, 0.3, 0.6, 0.9, 0.99, 0.9999, 1.0)


@pytest.fixture(scope="module")
def tiny():
    return load_pretrained("tiny-olmo2")


@pytest.fixture(scope="module")
def eigen_dir(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("edit")
    sites = [s for s in tiny.linear_sites() if s.projection in ("gate", "up", "down")]
    fdir = write_factor_run(str(root / "factors"), tiny, sites=sites, seed=2)
    return decompose_run(load_factors(fdir), str(root / "eigen")).directory


def brute_force_kept_mass(pi: np.ndarray, rho: float, total: float) -> float:
    """Sort all Π descending, cumsum, keep the shortest prefix reaching ρ·total (crossing kept);
    returns the kept mass."""
    p = np.sort(np.maximum(pi, 0).ravel())[::-1]
    cums = np.cumsum(p)
    k = min(int(np.searchsorted(cums, rho * total, side="left")) + 1, p.size)
    return float(cums[k - 1])


def _spectra(rng):
    """Random, heavy-tailed, degenerate (ties, zeros, tiny negatives) and flat spectra."""
    for m, n in ((1, 1), (1, 9), (7, 1), (13, 29), (40, 17), (64, 64)):
        yield np.sort(rng.random(m))[::-1], np.sort(rng.random(n))[::-1]
        yield np.sort(np.exp(rng.normal(0, 4, m)))[::-1], np.sort(np.exp(rng.normal(0, 4, n)))[::-1]
        lam = np.sort(rng.integers(0, 4, m).astype(float))[::-1]
        mu = np.sort(rng.integers(0, 3, n).astype(float))[::-1]
        if lam.sum() and mu.sum():
            yield lam, mu
        lam = np.repeat([2.0, 1.0, 0.5, 0.0], -(-m // 4))[:m]
        mu = np.concatenate([np.repeat([3.0, 1.0], -(-n // 2))[: max(n - 1, 1)], [-1e-9]])[:n]
        yield lam, np.sort(mu)[::-1]
        yield np.ones(m), np.ones(n)


def test_kept_mass_matches_brute_force_including_degenerate():
    rng = np.random.default_rng(0)
    worst = 0.0
    for lam, mu in _spectra(rng):
        spec = Spectrum.kronecker(lam, mu)
        pi = kronecker_curvature(lam, mu)
        for rho in RHOS:
            for sel in (select_mass(spec, rho), select_mass(Spectrum.dense(pi), rho)):
                ref = brute_force_kept_mass(pi, rho, sel.total_mass)
                worst = max(worst, abs(sel.kept_mass - ref) / sel.total_mass)
                mask = sel.dense_mask()
                assert mask.sum() == sel.kept
                np.testing.assert_allclose(pi[mask].sum(), sel.kept_mass, rtol=1e-12)
                # The crossing component is kept: dropping the smallest kept one falls short.
                target = rho * sel.total_mass
                assert sel.kept_mass >= target * (1 - 1e-12) or sel.kept == pi.size
                assert sel.kept_mass - pi[mask].min() < target * (1 + 1e-12)
    print(f"max |kept mass - brute force| / total = {worst:.3g}")
    assert worst < 1e-13


def test_exact_ties_break_row_major_in_every_path():
    """Ties that are exact in float64 (products of powers of two) resolve the same way on every
    machine: smaller i, then smaller j, in the staircase path, the full-Π path and the reference."""
    lam = np.array([8.0, 4.0, 4.0, 2.0, 1.0, 0.5])
    mu = np.array([4.0, 2.0, 2.0, 1.0, 0.5])
    spec = Spectrum.kronecker(lam, mu)
    pi = kronecker_curvature(lam, mu)
    for rho in (0.05, 0.2, 0.37, 0.5, 0.61, 0.8, 0.95):
        ref = brute_force_mask(pi, rho)
        stair = select_mass(spec, rho).dense_mask()
        dense = select_mass(Spectrum.dense(pi), rho).dense_mask()
        np.testing.assert_array_equal(stair, ref)
        np.testing.assert_array_equal(dense, ref)
    for k in range(pi.size + 1):  # count selection: the first k of the row-major-stable order
        expect = np.zeros(pi.size, bool)
        expect[np.argsort(-pi.ravel(), kind="stable")[:k]] = True
        counts = staircase_by_count(spec, k)
        got = np.arange(pi.shape[1])[None, :] < counts[:, None]
        np.testing.assert_array_equal(got, expect.reshape(pi.shape))


def test_staircase_is_threshold_set_and_count_selection():
    rng = np.random.default_rng(1)
    lam = np.sort(np.exp(rng.normal(0, 2, 50)))[::-1]
    mu = np.sort(np.exp(rng.normal(0, 2, 30)))[::-1]
    spec = Spectrum.kronecker(lam, mu)
    pi = spec.matrix()
    mask = select_mass(spec, 0.6).dense_mask()
    assert pi[mask].min() >= pi[~mask].max()  # {Π ≥ τ}: no kept component below a dropped one
    for k in (0, 1, 17, 700, 1500):
        counts = staircase_by_count(spec, k)
        assert counts.sum() == k and np.all(np.diff(counts) <= 0)
        top = np.sort(pi.ravel())[::-1][:k].sum()
        np.testing.assert_allclose(lam @ np.concatenate([[0], np.cumsum(mu)])[counts], top)


def _ortho(d, rng):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def test_reconstruction_matches_dense_formula_both_paths(monkeypatch):
    monkeypatch.setattr(reconstruct, "MIN_BLOCK_SAVING", 0.0)  # exercise row blocks on tiny W
    rng = np.random.default_rng(2)
    m, n = 48, 20
    lam = np.sort(np.exp(rng.normal(0, 2, m)))[::-1]
    mu = np.sort(np.exp(rng.normal(0, 2, n)))[::-1]
    u_g, u_a, w = _ortho(m, rng), _ortho(n, rng), rng.standard_normal((m, n))
    spec = Spectrum.kronecker(lam, mu)
    paths = set()
    with precision_scope("float64") as dtype:
        for sel in [select_mass(spec, r) for r in RHOS] + [
            select_band(spec, 10, 25),
            select_band(spec, 0, 100),
            select_band(spec, 50, 100),
        ]:
            ref = masked_reference(w, u_g, u_a, sel.dense_mask())
            for path in ("staircase", "dense"):
                got = masked_product(w, u_g, u_a, sel, dtype, path=path)
                np.testing.assert_allclose(got, ref, atol=1e-11)
            for _, counts in sel.staircases:
                plan = reconstruct.staircase_plan(counts, n)
                paths.add((plan["complement"], len(plan["blocks1"]) > 1, len(plan["blocks2"]) > 1))
    assert {p[0] for p in paths} == {False, True}, "kept-set and complement paths both exercised"
    assert any(p[1] for p in paths) and any(p[2] for p in paths), "multi-block arms exercised"


def test_sign_invariance_and_layouts():
    rng = np.random.default_rng(3)
    m, n = 32, 24
    eig = SiteEigen(
        None,
        np.sort(rng.random(m))[::-1],
        _ortho(m, rng),
        np.sort(rng.random(n))[::-1],
        _ortho(n, rng),
    )
    w = rng.standard_normal((m, n)).astype(np.float32)
    opts = EditOptions(compute_rank=False)
    base, _ = edit_weight(w, 0.6, opts, eig)
    flipped = SiteEigen(
        None, eig.lam, eig.U_G * rng.choice([-1, 1], m), eig.mu, eig.U_A * rng.choice([-1, 1], n)
    )
    np.testing.assert_allclose(edit_weight(w, 0.6, opts, flipped)[0], base, atol=2e-6)
    # Reference in float64 and HF layout from the brute-force mask.
    pi = kronecker_curvature(eig.lam, eig.mu)
    assert_edit_matches_up_to_ties(
        base, w, eig.U_G, eig.U_A, pi, brute_force_mask(pi, 0.6), atol=2e-6
    )


def _plan(model, text):
    return plan_from_json(text, model.linear_sites())


def test_rho_at_least_09999_is_bit_identical(tiny, eigen_dir):
    eigen = load_eigen(eigen_dir)
    plan = _plan(tiny, '{"0": {"gate": 0.9999, "up": 1.0}, "1": {"down": 1}}')
    params, rows = apply_plan(
        tiny.params, tiny.linear_sites(), plan, eigen, EditOptions(compute_rank=False)
    )
    for leaf_a, leaf_b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(tiny.params)
    ):
        assert leaf_a is leaf_b
    assert all(r["untouched"] for r in rows)
    # The kfac path itself with ρ = 1 keeps everything (up to rounding through the basis).
    e = eigen.site(GATE0)
    w = np.asarray(get_path(tiny.params, (*GATE0.split("."), "kernel"))).T
    sel = select_mass(Spectrum.kronecker(e.lam, e.mu), 1.0)
    assert sel.kept == w.size


def test_edit_report_and_sharded_equals_unsharded(tiny, eigen_dir, mesh8, mesh1):
    eigen = load_eigen(eigen_dir)
    plan = _plan(tiny, '{"0": {"gate": 0.6, "up": 0.3}, "1": {"down": 0.8}}')
    out = {}
    for name, (mesh, rules) in (("8", mesh8), ("1", mesh1)):
        shardings = param_shardings(tiny.config, mesh, rules)
        params = jax.device_put(tiny.params, shardings)
        out[name] = apply_plan(params, tiny.linear_sites(), plan, eigen, EditOptions())
    (p8, rows8), (p1, rows1) = out["8"], out["1"]
    for site_id in plan.targets:
        path = (*site_id.split("."), "kernel")
        k8, k1 = get_path(p8, path), get_path(p1, path)
        assert k8.sharding == get_path(param_shardings(tiny.config, *mesh8), path)
        assert len(k8.sharding.device_set) == 8 and len(k1.sharding.device_set) == 1
        np.testing.assert_allclose(np.asarray(k8), np.asarray(k1), atol=1e-6)
    for r8, r1 in zip(rows8, rows1):
        assert r8["kept"] == r1["kept"] and r8["rank"] == r1["rank"]
        assert 0 < r8["rel_delta_fro"] < 1
        assert r8["kept_mass"] >= r8["value"]
        k = np.asarray(get_path(p1, (*r1["id"].split("."), "kernel")))
        assert r1["rank"] == np.linalg.matrix_rank(k)


def test_controls(tiny, eigen_dir):
    eigen = load_eigen(eigen_dir)
    e = eigen.site(GATE0)
    w = np.asarray(get_path(tiny.params, (*GATE0.split("."), "kernel"))).T.astype(np.float64)
    # SVD: drop the bottom half of the singular components.
    new, row = edit_weight(w, 0.5, EditOptions(method="svd", precision="float64"), name=GATE0)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(new, (u[:, :32] * s[:32]) @ vt[:32], atol=1e-10)
    assert row["rank"] == row["kept"] == 32
    np.testing.assert_allclose(row["kept_mass"], (s[:32] ** 2).sum() / (s**2).sum())
    # Band: removes exactly the components ranked [10%, 25%) by Π.
    opts = EditOptions(method="band", precision="float64")
    new, row = edit_weight(w, (10.0, 25.0), opts, e, name=GATE0)
    pi = kronecker_curvature(e.lam, e.mu)
    kept = brute_force_band(pi, 10.0, 25.0)
    assert_edit_matches_up_to_ties(new, w, e.U_G, e.U_A, pi, kept, atol=1e-10)
    assert row["kept"] == kept.sum()
    np.testing.assert_allclose(row["kept_mass"], pi[kept].sum() / pi.sum(), rtol=1e-6)
    # Random bases: same number kept, a different matrix, reproducible by seed.
    kf, kf_row = edit_weight(w, 0.6, EditOptions(precision="float64"), e, name=GATE0)
    r1, rrow = edit_weight(
        w, 0.6, EditOptions(method="random", precision="float64", seed=1), e, name=GATE0
    )
    r1b, _ = edit_weight(
        w, 0.6, EditOptions(method="random", precision="float64", seed=1), e, name=GATE0
    )
    r2, _ = edit_weight(
        w, 0.6, EditOptions(method="random", precision="float64", seed=2), e, name=GATE0
    )
    assert rrow["kept"] == kf_row["kept"]
    np.testing.assert_array_equal(r1, r1b)
    assert np.abs(r1 - r2).max() > 1e-3 and np.abs(r1 - kf).max() > 1e-3


def test_ekfac_hook(tiny, eigen_dir, tmp_path):
    e = load_eigen(eigen_dir).site(GATE0)
    w = np.asarray(get_path(tiny.params, (*GATE0.split("."), "kernel"))).T
    # A full Π equal to λ μᵀ selects the same components as the staircase path.
    run_dir = str(tmp_path / "eigen")
    import shutil

    shutil.copytree(eigen_dir, run_dir)
    eigen = load_eigen(run_dir)
    opts = EditOptions(eigenvalues="ekfac", compute_rank=False)
    with pytest.raises(ValueError, match="EK-FAC"):
        edit_weight(w, 0.6, opts, e, eigen, name=GATE0)
    # Stored in float64: the very products the staircase path ranks (same ties, same winner).
    pi_kfac = kronecker_curvature(e.lam, e.mu)
    analysis = str(tmp_path / "analysis")
    save_corrected_eigenvalues(run_dir, {GATE0: pi_kfac}, analysis)
    eigen = load_eigen(run_dir)
    eigen.use_corrected(analysis)
    dense, drow = edit_weight(w, 0.6, opts, e, eigen, name=GATE0)
    stair, srow = edit_weight(w, 0.6, EditOptions(compute_rank=False), e, name=GATE0)
    assert abs(drow["kept"] - srow["kept"]) <= 1
    np.testing.assert_allclose(drow["kept_mass"], srow["kept_mass"], rtol=1e-9)
    ref = brute_force_mask(pi_kfac, 0.6)
    for got in (dense, stair):
        assert_edit_matches_up_to_ties(got, w, e.U_G, e.U_A, pi_kfac, ref, atol=2e-6)
    # A genuinely non-Kronecker Π: kept mass equals the brute-force reference.
    pi = np.random.default_rng(4).random(w.shape) ** 4
    sel = select_mass(Spectrum.dense(pi), 0.6)
    np.testing.assert_allclose(sel.kept_mass, brute_force_kept_mass(pi, 0.6, pi.sum()), rtol=1e-12)


def test_export_hf_reload_same_logits_and_hf_layout(tiny, eigen_dir, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    eigen = load_eigen(eigen_dir)
    plan = _plan(tiny, '{"0": {"gate": 0.6, "up": 0.6}, "1": {"down": 0.5}}')
    params, _ = apply_plan(
        tiny.params, tiny.linear_sites(), plan, eigen, EditOptions(compute_rank=False)
    )
    edited = tiny.with_params(params)
    base_dir, edit_dir = str(tmp_path / "base"), str(tmp_path / "edited")
    export_hf(tiny.config, tiny.params, base_dir)
    export_hf(edited.config, edited.params, edit_dir)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    hf_edit = transformers.AutoModelForCausalLM.from_pretrained(edit_dir)
    tokens = np.random.default_rng(0).integers(0, tiny.config.vocab_size, (2, 12))
    ours = np.asarray(edited.logits(tokens))
    with torch.no_grad():
        theirs = hf_edit(torch.as_tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(load_pretrained(edit_dir).logits(tokens)), ours, atol=1e-5
    )
    assert np.abs(ours - np.asarray(tiny.logits(tokens))).max() > 1e-4  # the edit did something
    # HF layout: edit the transformers weight W [d_out, d_in] directly (float64, brute force).
    sd = hf_base.state_dict()
    for site_id, rho in plan.targets.items():
        e = eigen.site(site_id)
        w = sd[f"{site_id}.weight"].double().numpy()
        pi = kronecker_curvature(e.lam, e.mu)
        got = hf_edit.state_dict()[f"{site_id}.weight"].double().numpy()
        assert_edit_matches_up_to_ties(
            got, w, e.U_G, e.U_A, pi, brute_force_mask(pi, rho), atol=5e-6
        )


def test_bad_input(tiny, eigen_dir, tmp_path):
    sites = tiny.linear_sites()
    eigen = load_eigen(eigen_dir)
    for rho in (0, -0.1, 1.5, float("nan")):
        plan = parse_plan({"0": {"gate": rho}}, sites)
        with pytest.raises(ValueError, match=rf"{GATE0}.*outside \(0, 1\]"):
            apply_plan(tiny.params, sites, plan, eigen)
    with pytest.raises(ValueError, match="unknown projection 'gat'"):
        parse_plan({"0": {"gat": 0.6}}, sites)
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        parse_plan({"7": {"gate": 0.6}}, sites)
    with pytest.raises(ValueError, match="band needs"):
        apply_plan(
            tiny.params,
            sites,
            parse_plan({"0": {"gate": 0.6}}, sites),
            eigen,
            EditOptions(method="band"),
        )
    # A layer that was never collected (the fixture collected MLPs only).
    plan = parse_plan({"0": {"q": 0.6}}, sites)
    with pytest.raises(ValueError, match=r"self_attn\.q_proj: this layer was never collected"):
        apply_plan(tiny.params, sites, plan, eigen)
    # Factors from a different model: same layer ids, other widths.
    wide = decoder_sites(tiny.config.replace(intermediate_size=96))
    fdir = write_factor_run(str(tmp_path / "f"), tiny, sites=[s for s in wide if s.id == GATE0])
    other_eigen = decompose_run(load_factors(fdir), str(tmp_path / "e"))
    with pytest.raises(ValueError, match=rf"{GATE0}: the eigen run's factors are for a 96x64"):
        apply_plan(tiny.params, sites, parse_plan({"0": {"gate": 0.6}}, sites), other_eigen)


def test_cli_edit_end_to_end(tiny, eigen_dir, tmp_path, capsys):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({"0": {"gate": 0.6, "up": 0.6}, "1": {"down": 1.0}}))
    out, hf_dir = str(tmp_path / "out"), str(tmp_path / "hf")
    args = [
        "edit",
        "--model",
        "tiny-olmo2",
        "--eigen",
        eigen_dir,
        "--out",
        out,
        "--layers-file",
        str(plan_file),
        "--export-hf",
        hf_dir,
        "--mesh",
        "data",
    ]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert GATE0 in printed and "rank(W')" in printed
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    rows = {r["id"]: r for r in report["matrices"]}
    assert rows["model.layers.1.mlp.down_proj"]["untouched"]
    assert 0.6 <= rows[GATE0]["kept_mass"] < 0.7
    assert report["eigen"]["factor_run"]["model"]["fingerprint"] == tiny.fingerprint()
    assert report["warning"] is None
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    assert os.path.isfile(os.path.join(hf_dir, "model.safetensors"))
    edited = load_pretrained(out)
    k = np.asarray(get_path(edited.params, (*GATE0.split("."), "kernel")))
    assert not np.array_equal(k, np.asarray(get_path(tiny.params, (*GATE0.split("."), "kernel"))))
    assert rows[GATE0]["rank"] == np.linalg.matrix_rank(k)
    # Refuses to overwrite; a bad ρ fails cleanly with nothing written.
    assert cli_main(args) == 2 and "--overwrite" in capsys.readouterr().err
    bad_out = str(tmp_path / "bad")
    base = ["edit", "--model", "tiny-olmo2", "--eigen", eigen_dir, "--out", bad_out]
    assert cli_main([*base, "--layers-json", '{"0": {"gate": 1.5}}']) == 2
    assert "outside (0, 1]" in capsys.readouterr().err
    assert not os.path.exists(bad_out)
    # Short form with the svd control (no eigen run needed): its knob is --drop, and --rho (the
    # curvature mass kept) is refused with a pointer to --drop.
    svd = ["edit", "--model", "tiny-olmo2", "--out", str(tmp_path / "svd"), "--method", "svd"]
    svd += ["--layers", "1", "--projections", "gate"]
    assert cli_main([*svd, "--rho", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--drop" in err and "--rho" in err
    assert not os.path.exists(tmp_path / "svd")
    assert cli_main([*svd, "--drop", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "drop=0.5" in printed and "kept share" in printed
    with open(tmp_path / "svd" / "report.json") as f:
        (row,) = json.load(f)["matrices"]
    assert row["kept"] == 32 and row["components"] == 64 and row["kept_share"] == 0.5
    assert row["kept_measure"] == "squared singular values" and 0.5 < row["kept_mass"] < 1
    assert (
        cli_main([*base[:-2], "--out", str(tmp_path / "d"), "--layers", "1", "--drop", "0.5"]) == 2
    )
    assert "--method svd" in capsys.readouterr().err


def test_cli_edit_table_shows_kept_mass_and_components(tiny, eigen_dir, capsys, tmp_path):
    """The printed table: kept mass (≈ ρ) and kept components as a count and a share of all."""
    out = str(tmp_path / "e")
    args = ["edit", "--model", "tiny-olmo2", "--eigen", eigen_dir, "--out", out]
    assert cli_main([*args, "--layers", "0", "--projections", "gate", "--rho", "0.6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = lines[0]
    for title in ("setting", "kept mass", "kept comps", "of", "kept share"):
        assert title in head
    (row_line,) = [line for line in lines if line.startswith(GATE0)]
    with open(os.path.join(out, "report.json")) as f:
        (row,) = json.load(f)["matrices"]
    assert row["components"] == 128 * 64 and row["kept_share"] == row["kept"] / row["components"]
    assert row["kept_measure"] == "curvature mass" and 0.6 <= row["kept_mass"] < 0.7
    assert row["kept_share"] < row["kept_mass"]  # high-curvature components are few
    cells = row_line.split()
    assert "ρ=0.6" in cells and str(row["kept"]) in cells and str(row["components"]) in cells
    assert f"{row['kept_share']:.4f}" in cells and f"{row['kept_mass']:.4f}" in cells


def test_cli_edit_export_hf_only_writes_no_orbax_copy(tiny, eigen_dir, capsys, tmp_path):
    """--out is optional with --export-hf: the HF directory is the only output (with the edit's
    report.json and config.yaml) and transformers-loadable; neither flag is an error."""
    hf_dir = tmp_path / "hf"
    args = ["edit", "--model", "tiny-olmo2", "--eigen", eigen_dir]
    args += ["--layers", "1", "--projections", "gate,up", "--rho", "0.7"]
    assert cli_main([*args, "--export-hf", str(hf_dir)]) == 0
    capsys.readouterr()
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no Orbax directory anywhere
    names = set(os.listdir(hf_dir))
    assert {"config.json", "model.safetensors", "report.json", "config.yaml"} <= names
    assert "params" not in names and "model_config.json" not in names
    with open(hf_dir / "report.json") as f:
        report = json.load(f)
    edited = load_pretrained(str(hf_dir))
    assert edited.fingerprint() == report["model"]["edited_fingerprint"]
    with open(hf_dir / "provenance.json") as f:
        assert json.load(f)["metadata"]["edit"]["plan"] == report["plan"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--export-hf" in err and err.count("\n") == 1
