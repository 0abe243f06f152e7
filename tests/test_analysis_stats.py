"""Analyzer math without a model: per-example projections vs brute force, EK-FAC vs the explicit
per-example Fisher, band membership vs the edit's band control, idiosyncrasy vs set intersection,
a constructed memorized-vs-shared case, spectra, example-set parsing and bad input."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from kfac_mem.analysis.bands import BANDS, band_sizes, kfac_bands, rank_bands
from kfac_mem.analysis.per_example import band_strength, gamma_stats
from kfac_mem.analysis.sets import as_example_set, load_set, parse_set_flag, position_mask
from kfac_mem.analysis.spectrum import spectrum_summary
from kfac_mem.analysis.summary import DirectionCounts, brute_force_overlap, derived
from kfac_mem.decomposition.store import SiteEigen
from kfac_mem.editing.selection import Spectrum, select_band, select_mass
from models.sites import make_site


def orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def spectra(rng, d_out, d_in):
    yield np.sort(rng.random(d_out))[::-1], np.sort(rng.random(d_in))[::-1]
    # ties (blocks of equal eigenvalues) and exact zeros
    lam = np.repeat([3.0, 1.0, 0.5, 0.0], -(-d_out // 4))[:d_out]
    mu = np.repeat([2.0, 2.0, 1.0], -(-d_in // 3))[:d_in]
    yield lam, mu


def band_masks(spec):
    """Dense masks of each band from the edit's band control (removed = band members)."""
    return [~select_band(spec, lo, hi).dense_mask() for _, lo, hi in BANDS]


def test_bands_equal_the_edit_band_control():
    rng = np.random.default_rng(0)
    for d_out, d_in in ((13, 7), (8, 20), (1, 9), (24, 24)):
        for lam, mu in spectra(rng, d_out, d_in):
            spec = Spectrum.kronecker(lam, mu)
            bands = kfac_bands(spec)
            band_of = bands.band_of()
            masks = band_masks(spec)
            for b, mask in enumerate(masks):
                np.testing.assert_array_equal(
                    band_of == b, mask, err_msg=f"band {b} {d_out}x{d_in}"
                )
            assert [int(m.sum()) for m in masks] == band_sizes(spec.shape)
            # pair-faithful column multiplicity n_B(j) = #{i : (i, j) in B}
            dense = np.stack([m.sum(0) for m in masks], 1)
            np.testing.assert_array_equal(bands.column_multiplicity(), dense)
    w = rank_bands(20)
    assert w.sum() == 20 and (w.sum(1) == 1).all()
    assert [int(c) for c in w.sum(0)] == [2, 3, 5, 10]


@pytest.mark.parametrize("row_chunk", [4, 13])
def test_gamma_stats_equal_brute_force_rotation(row_chunk):
    """Γ_n formed explicitly in the original basis and rotated equals the projected-factor path."""
    rng = np.random.default_rng(1)
    b, s, d_out, d_in, k = 3, 5, 13, 7, 6
    g = rng.standard_normal((b, s, d_out)).astype(np.float32)
    a = rng.standard_normal((b, s, d_in)).astype(np.float32)
    u_g, u_a = orthogonal(rng, d_out), orthogonal(rng, d_in)
    lam, mu = np.sort(rng.random(d_out))[::-1], np.sort(rng.random(d_in))[::-1]
    spec = Spectrum.kronecker(lam, mu)
    bands = kfac_bands(spec)
    stats, sums = gamma_stats(
        jnp.asarray(g @ u_g), jnp.asarray(a @ u_a), jnp.asarray(bands.counts), k, row_chunk
    )
    stats = {n: np.asarray(v) for n, v in stats.items()}
    masks = band_masks(spec)
    g64, a64 = g.astype(np.float64), a.astype(np.float64)
    total_sq = np.zeros((d_out, d_in))
    for n in range(b):
        gamma = g64[n].T @ a64[n]  # Γ_n = Σ_t g_t a_tᵀ [d_out, d_in]
        sq = (u_g.T @ gamma @ u_a) ** 2
        total_sq += sq
        np.testing.assert_allclose(stats["total"][n], sq.sum(), rtol=1e-5)
        np.testing.assert_allclose(stats["total"][n], (gamma**2).sum(), rtol=1e-5)  # basis-free
        np.testing.assert_allclose(stats["fourth"][n], (sq**2).sum(), rtol=1e-5)
        np.testing.assert_allclose(
            stats["band"][n], [sq[m].sum() for m in masks], rtol=1e-4, atol=1e-6 * sq.sum()
        )
        order = np.argsort(-sq.ravel(), kind="stable")[:k]
        np.testing.assert_allclose(stats["top_values"][n], sq.ravel()[order], rtol=1e-5)
        np.testing.assert_array_equal(stats["top_index"][n], order)
    np.testing.assert_allclose(np.asarray(sums), total_sq, rtol=1e-5, atol=1e-6)


def test_ekfac_equals_quadratic_form_of_per_example_fisher():
    """(1/ΣT) Σ_n Γ̃_n,ij² equals (u_i ⊗ v_j)ᵀ F (u_i ⊗ v_j) with F the explicit empirical Fisher of
    the per-example gradients (1/ΣT) Σ_n vec(Γ_n) vec(Γ_n)ᵀ [d_out·d_in, d_out·d_in]."""
    rng = np.random.default_rng(2)
    b, s, d_out, d_in = 5, 4, 6, 5
    g = rng.standard_normal((b, s, d_out)).astype(np.float32)
    a = rng.standard_normal((b, s, d_in)).astype(np.float32)
    u_g, u_a = orthogonal(rng, d_out), orthogonal(rng, d_in)
    counts = kfac_bands(Spectrum.kronecker(np.ones(d_out), np.ones(d_in))).counts
    _, sums = gamma_stats(jnp.asarray(g @ u_g), jnp.asarray(a @ u_a), jnp.asarray(counts), 4, 4)
    n_pos = b * s
    ekfac = np.asarray(sums, np.float64) / n_pos
    vecs = np.stack([(g[n].T.astype(np.float64) @ a[n]).reshape(-1) for n in range(b)])
    fisher = vecs.T @ vecs / n_pos
    for i in range(d_out):
        for j in range(d_in):
            kron = np.kron(u_g[:, i], u_a[:, j])  # row-major vec: index o·d_in + i'
            np.testing.assert_allclose(ekfac[i, j], kron @ fisher @ kron, rtol=1e-4, atol=1e-7)


def test_direction_overlap_matches_set_intersection_and_streams():
    rng = np.random.default_rng(3)
    top = np.stack([rng.choice(30, 5, replace=False) for _ in range(17)])
    one = DirectionCounts(5)
    one.add(top)
    streamed = DirectionCounts(5)
    for start in range(0, 17, 4):
        streamed.add(top[start : start + 4])
    s1, s2 = one.summary(), streamed.summary()
    assert s1 == s2
    assert s1["top_overlap"] == pytest.approx(brute_force_overlap(top), rel=1e-12)
    held = {}
    for row in top:
        for d in row:
            held[d] = held.get(d, 0) + 1
    assert s1["unique_fraction"] == pytest.approx(sum(c == 1 for c in held.values()) / top.size)
    assert s1["max_direction_share"] == pytest.approx(max(held.values()) / 17)
    same = DirectionCounts(3)
    same.add(np.tile([1, 2, 3], (4, 1)))
    assert same.summary()["top_overlap"] == 1.0
    disjoint = DirectionCounts(2)
    disjoint.add(np.arange(8).reshape(4, 2))
    assert disjoint.summary()["top_overlap"] == 0.0


def test_band_strength_is_pair_faithful():
    rng = np.random.default_rng(4)
    d_out, d_in = 9, 6
    spec = Spectrum.kronecker(np.sort(rng.random(d_out))[::-1], np.sort(rng.random(d_in))[::-1])
    bands = kfac_bands(spec)
    coords = rng.standard_normal((2, 3, d_in)).astype(np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    s1, s2 = band_strength(
        jnp.asarray(coords), jnp.asarray(bands.column_multiplicity()), jnp.asarray(mask)
    )
    band_of = bands.band_of()
    for n in range(2):
        for b in range(len(BANDS)):
            energy = [
                sum(
                    coords[n, t, j] ** 2
                    for i in range(d_out)
                    for j in range(d_in)
                    if band_of[i, j] == b
                )
                for t in range(3)
            ]
            np.testing.assert_allclose(s2[n, b], np.dot(mask[n], energy), rtol=1e-5)
            np.testing.assert_allclose(s1[n, b], np.dot(mask[n], np.sqrt(energy)), rtol=1e-5)


def constructed(rng, d=24, t=6, n_shared=12, n_mem=10, n_background=2000):
    """A population with a known structure, in coordinates of fixed orthogonal bases P, Q.

    Background (only in the factors): variance 0.7^j along the j-th basis vector on both sides.
    Shared examples: every position along basis vector 0 plus noise in the top-4 subspace (one
    common direction, spread over a common subspace). Memorized example n: every position along
    its own pair of low-variance basis vectors (d−1−n, d−1−n), plus tiny isotropic noise.
    """
    p, q = orthogonal(rng, d), orthogonal(rng, d)

    def shared_coords():
        x = np.zeros((n_shared, t, d))
        x[:, :, 0] = 1.0
        x[:, :, :4] += 0.6 * rng.standard_normal((n_shared, t, 4))
        return x

    def mem_coords():
        x = 0.02 * rng.standard_normal((n_mem, t, d))
        for n in range(n_mem):
            x[n, :, d - 1 - n] += 1.0
        return x

    cg_s, ca_s, cg_m, ca_m = shared_coords(), shared_coords(), mem_coords(), mem_coords()
    bg = np.diag(0.7 ** np.arange(d)) * n_background
    n_pos = n_background + (n_shared + n_mem) * t

    def factor(c_s, c_m, basis):
        x = np.concatenate([c_s, c_m]).reshape(-1, d)
        return basis @ (x.T @ x + bg) @ basis.T / n_pos

    lam, u_g = np.linalg.eigh(factor(cg_s, cg_m, p))
    mu, u_a = np.linalg.eigh(factor(ca_s, ca_m, q))
    lam, u_g, mu, u_a = lam[::-1], u_g[:, ::-1], mu[::-1], u_a[:, ::-1]
    sets = {"shared": (cg_s @ p.T, ca_s @ q.T), "memorized": (cg_m @ p.T, ca_m @ q.T)}
    return sets, (lam, u_g, mu, u_a)


def test_constructed_memorized_and_shared_are_ranked_as_built():
    rng = np.random.default_rng(5)
    sets, (lam, u_g, mu, u_a) = constructed(rng)
    spec = Spectrum.kronecker(lam, mu)
    bands = kfac_bands(spec)
    k = 4
    out = {}
    for name, (g, a) in sets.items():
        stats, sums = gamma_stats(
            jnp.asarray(g @ u_g, jnp.float32),
            jnp.asarray(a @ u_a, jnp.float32),
            jnp.asarray(bands.counts),
            k,
            7,
        )
        stats = {n: np.asarray(v, np.float64) for n, v in stats.items()}
        sharp, pr, share = derived(
            stats["total"], stats["fourth"], stats["top_values"], stats["band"]
        )
        counts = DirectionCounts(k)
        counts.add(stats["top_index"])
        pooled = np.sort(np.asarray(sums).ravel())[::-1]
        retained = pooled[:k].sum() / pooled.sum() / sharp.mean()
        strength, _ = band_strength(
            jnp.asarray(a @ u_a, jnp.float32),
            jnp.asarray(bands.column_multiplicity()),
            jnp.ones(a.shape[:2]),
        )
        out[name] = {
            "sharp": np.median(sharp),
            "pr": np.median(pr),
            "share": share.mean(0),
            "overlap": counts.summary()["top_overlap"],
            "retained": retained,
            "strength": np.asarray(strength).sum(0) / (a.shape[0] * a.shape[1]),
        }
    mem, shared = out["memorized"], out["shared"]
    assert mem["sharp"] > 0.95 and shared["sharp"] < 0.92  # sharp vs broad
    assert mem["pr"] < 1.5 < 2.0 < shared["pr"]
    assert mem["overlap"] < 0.1 < 0.4 < shared["overlap"]  # idiosyncratic vs consistent
    assert mem["share"][-1] > 0.9 and shared["share"][0] > 0.9  # flat vs high bands
    assert mem["retained"] < 0.6 < 0.8 < shared["retained"]  # spikes cancel in the average
    ratio = mem["strength"] / shared["strength"]
    assert ratio[-1] > 1 > ratio[0]  # memorized inputs load the bottom band, shared the top


def test_spectrum_summary_matches_sorting_all_components():
    rng = np.random.default_rng(6)
    lam, mu = np.sort(rng.exponential(size=12))[::-1], np.sort(rng.exponential(size=9))[::-1]
    lam[-1] = -1e-9  # rounding negative: clamped
    site = make_site("model.layers", 0, "up", 9, 12)
    eig = SiteEigen(site, lam, np.eye(12), mu, np.eye(9))
    out = spectrum_summary(eig, rhos=(0.6, 0.9))
    spec = Spectrum.kronecker(lam, mu)
    p = np.sort(spec.matrix().ravel())[::-1]
    cums = np.cumsum(p) / p.sum()
    for f, m in zip(
        out["mass_curve"]["fraction_of_components"], out["mass_curve"]["fraction_of_mass"]
    ):
        k = round(f * p.size)
        assert m == pytest.approx(cums[k - 1] if k else 0.0, abs=1e-12)
    for cut in out["rho_cuts"]:
        sel = select_mass(spec, cut["rho"])
        assert cut["kept_components"] == sel.kept
        assert cut["tau"] == pytest.approx(p[sel.kept - 1])
    assert sum(b["mass_fraction"] for b in out["band_mass"]) == pytest.approx(1.0)
    assert out["clamped_negative"] == 1
    # the staircase path (large matrices) gives the same numbers
    import kfac_mem.analysis.spectrum as sp

    old = sp.DENSE_LIMIT
    try:
        sp.DENSE_LIMIT = 0
        stair = spectrum_summary(eig, rhos=(0.6, 0.9), curve_points=120)
    finally:
        sp.DENSE_LIMIT = old
    np.testing.assert_allclose(
        [b["mass_fraction"] for b in stair["band_mass"]],
        [b["mass_fraction"] for b in out["band_mass"]],
        rtol=1e-12,
    )


def test_example_sets_and_bad_input(tmp_path):
    rows = [
        {"prefix_ids": [1, 2, 3], "suffix_ids": [4, 5]},
        {"prefix_ids": [6, 7, 8], "suffix_ids": [9, 1]},
    ]
    s = as_example_set("mem", rows, positions="suffix", vocab_size=16)
    np.testing.assert_array_equal(s.tokens[1], [6, 7, 8, 9, 1])
    np.testing.assert_array_equal(s.positions[0], [0, 0, 1, 1, 0])  # positions predicting suffix
    np.testing.assert_array_equal(position_mask(1, 5, "all", 3)[0], [1, 1, 1, 1, 0])
    path = tmp_path / "mem.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_set("mem", str(path), vocab_size=16).tokens.shape == (2, 5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prefix_ids": [1, 2, 3]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field\(s\) \['suffix_ids'\]"):
        load_set("mem", str(bad), vocab_size=16)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        load_set("mem", str(path), vocab_size=5)
    with pytest.raises(ValueError, match="row 2: missing field"):
        as_example_set("mem", [rows[0], {"suffix_ids": [1]}])
    text = tmp_path / "clean.txt"
    text.write_text("some words")
    with pytest.raises(ValueError, match="no tokenizer"):
        load_set("clean", str(text))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_set("clean", str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="NAME=FILE"):
        parse_set_flag("justafile.jsonl")
    with pytest.raises(ValueError, match="invalid"):
        parse_set_flag("a/b=x.jsonl")
    with pytest.raises(ValueError, match="integer token array"):
        as_example_set("x", np.zeros((2, 3), np.float32))
