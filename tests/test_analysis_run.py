"""The analyzer end to end on a tiny OLMo-2 with collected and decomposed factors: per-example
projections against per-example jax.grad gradients, saved EK-FAC eigenvalues, ablation losses
against a hand-made band removal, 1 vs 8 devices, report files and zarr arrays, CLI, bad input."""

import dataclasses
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfac_mem.analysis import AnalyzeOptions, analyze, open_arrays, read_report
from kfac_mem.cli import main as cli_main
from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.head_loss import head_cotangent
from kfac_mem.collection.run import collect
from kfac_mem.data import Windows, array_fingerprint
from kfac_mem.decomposition.store import decompose_run, load_eigen
from kfac_mem.editing import EditOptions, Spectrum, apply_plan, parse_plan, select_band
from kfac_mem.evaluation.batching import length_bucket
from models import load_pretrained, save_model
from models.sites import get_path, set_path

SITES = (
    "model.layers.0.mlp.gate_proj",
    "model.layers.1.mlp.up_proj",
    "model.layers.1.mlp.down_proj",
)
SEQ = 12


@pytest.fixture(scope="module")
def olmo8(mesh8):
    return load_pretrained("tiny-olmo2", mesh=mesh8[0], rules=mesh8[1])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.RandomState(0)
    corpus = rng.randint(0, 256, (16, SEQ)).astype(np.int32)
    mem = [
        {"prefix_ids": r[:7].tolist(), "suffix_ids": r[7:].tolist(), "text": "x"}
        for r in rng.randint(0, 256, (9, SEQ))
    ]
    root = tmp_path_factory.mktemp("analysis_data")
    mem_path = root / "memorized.jsonl"
    mem_path.write_text("".join(json.dumps(r) + "\n" for r in mem))
    clean_path = root / "clean.npy"
    np.save(clean_path, corpus[:10])
    return {"corpus": corpus, "mem_rows": mem, "mem": str(mem_path), "clean": str(clean_path)}


@pytest.fixture(scope="module")
def eigen_dir(tmp_path_factory, olmo8, data):
    root = tmp_path_factory.mktemp("analysis_eigen")
    sites = [s for s in olmo8.linear_sites() if s.id in SITES]
    toks = data["corpus"]
    run = collect(
        olmo8,
        Windows(toks, ("random",), array_fingerprint(toks)),
        sites,
        str(root / "factors"),
        CollectConfig(batch_size=8),
        progress=False,
    )
    return decompose_run(run, str(root / "eigen"), mesh=olmo8.mesh, rules=olmo8.rules).directory


OPTIONS = AnalyzeOptions(
    top_k=6, batch_size=8, row_chunk=48, progress=False, ablation_control=False
)


@pytest.fixture(scope="module")
def run8(tmp_path_factory, olmo8, eigen_dir, data):
    out = str(tmp_path_factory.mktemp("analysis_run8") / "out")
    sets = {"memorized": data["mem"], "clean": data["clean"]}
    report = analyze(olmo8, eigen_dir, sets, out_dir=out, options=OPTIONS, log=None)
    return out, report


@functools.partial(jax.jit, static_argnums=(0, 1))
def _labels(model, mode, params, inputs, gold, weights, key):
    """The labels the analyzer's step uses (sampled: same key and batch shape)."""
    hidden, _ = model.hidden_states(params, inputs)
    return head_cotangent(hidden, model.head_kernel(params), None, gold, weights, mode, key)[2]


@functools.partial(jax.jit, static_argnums=0)
def _kernel_grads(model, params, kernels, x, y, w):
    """∂/∂kernels of the summed CE Σ_t w_t CE_t(y_t) of one example."""
    sites = {s.id: s for s in model.linear_sites()}

    def loss(kernels):
        p = params
        for sid, k in kernels.items():
            p = set_path(p, sites[sid].kernel_path, k)
        h, _ = model.hidden_states(p, x)
        logp = jax.nn.log_softmax(h @ model.head_kernel(p))
        return -jnp.sum(jnp.take_along_axis(logp, y[..., None], -1)[..., 0] * w)

    return jax.grad(loss)(kernels)


def per_example_gamma(model, tokens, positions, site_ids, key, pad_to, mode="sampled"):
    """Brute force: Γ_n = (∂L_n/∂kernel)ᵀ by jax.grad per example, with the labels the analyzer
    draws for this batch (same key, same zero-padded batch shape [pad_to, L])."""
    params = jax.device_get(model.params)
    m = tokens.shape[0]
    padded = np.zeros((pad_to, tokens.shape[1]), np.int32)
    padded[:m] = tokens
    inputs, gold, weights = model.loss_targets(jnp.asarray(padded))
    weights = weights * jnp.asarray(
        np.concatenate([positions, np.zeros((pad_to - m, tokens.shape[1]), np.float32)])
    )
    labels = _labels(model, mode, params, inputs, gold, weights, key)
    inputs, labels, weights = inputs[:m], labels[:m], weights[:m]
    sites = {s.id: s for s in model.linear_sites()}
    kernels = {sid: get_path(params, sites[sid].kernel_path) for sid in site_ids}
    out = []
    for n in range(tokens.shape[0]):
        g = _kernel_grads(
            model, params, kernels, inputs[n : n + 1], labels[n : n + 1], weights[n : n + 1]
        )
        out.append({sid: np.asarray(v, np.float64).T for sid, v in g.items()})  # [d_out, d_in]
    return out, np.asarray(weights.sum(1))


def test_per_example_projections_ekfac_and_arrays_match_brute_force(olmo8, eigen_dir, data, run8):
    out, report = run8
    store = open_arrays(out)
    eigen = load_eigen(eigen_dir)
    from kfac_mem.analysis.sets import as_example_set

    sets = {
        "memorized": as_example_set("memorized", data["mem"]),
        "clean": as_example_set("clean", data["clean"]),
    }
    ek_sum = {sid: 0.0 for sid in SITES}
    ek_pos = 0.0
    base = jax.random.key(OPTIONS.seed)
    for si, (name, s) in enumerate(sets.items()):
        n = len(s)
        gammas, n_pos = [], []
        # The analyzer's batches: 8 rows, zero-padded to the set's length bucket (sampled labels
        # are drawn for that shape).
        width = length_bucket(SEQ)
        for bi, start in enumerate(range(0, n, 8)):
            tokens = np.zeros((8, width), np.int32)
            positions = np.zeros((8, width), np.float32)
            m = min(8, n - start)
            tokens[:m, :SEQ] = s.tokens[start : start + m]
            positions[:m, :SEQ] = s.positions[start : start + m]
            key = jax.random.fold_in(jax.random.fold_in(base, si), bi)
            g, p = per_example_gamma(olmo8, tokens[:m], positions[:m], SITES, key, pad_to=8)
            gammas += g
            n_pos += list(p)
        np.testing.assert_allclose(store.read(f"{name}/n_positions"), n_pos)
        for sid in SITES:
            e = eigen.site(sid)
            spec = Spectrum.kronecker(e.lam, e.mu)
            masks = [~select_band(spec, lo, hi).dense_mask() for _, lo, hi in OPTIONS.bands]
            total = store.read(f"{name}/{sid}/total")
            share = store.read(f"{name}/{sid}/band_share")
            top_v, top_i = (
                store.read(f"{name}/{sid}/top_values"),
                store.read(f"{name}/{sid}/top_index"),
            )
            for ex in range(n):
                sq = (e.U_G.T.astype(np.float64) @ gammas[ex][sid] @ e.U_A) ** 2
                scale = sq.sum()
                np.testing.assert_allclose(total[ex], scale, rtol=2e-4)
                np.testing.assert_allclose(
                    share[ex], [sq[m].sum() / scale for m in masks], atol=2e-4
                )
                np.testing.assert_allclose(
                    top_v[ex], np.sort(sq.ravel())[::-1][:6], rtol=2e-3, atol=1e-6 * scale
                )
                np.testing.assert_allclose(
                    sq.ravel()[top_i[ex]], top_v[ex], rtol=2e-3, atol=1e-6 * scale
                )
                if name == "clean":
                    ek_sum[sid] = ek_sum[sid] + sq
            summary = report["per_example"][sid][name]
            assert summary["examples"] == n
            assert summary["total"]["median"] == pytest.approx(np.median(total), rel=1e-5)
        if name == "clean":
            ek_pos += sum(n_pos)
    # EK-FAC corrected eigenvalues (default: the clean set) saved with the analysis, with
    # provenance; the eigen run is not rewritten
    assert report["ekfac"]["saved"] and report["ekfac"]["sets"] == ["clean"]
    assert not os.path.exists(os.path.join(eigen_dir, "ekfac.json"))
    eigen = load_eigen(eigen_dir)
    info = eigen.use_corrected(out)
    assert info["sets"] == ["clean"] and set(info["set_fingerprints"]) == {"clean"}
    assert info["eigen"]["model_fingerprint"] == eigen.model_fingerprint
    for sid in SITES:
        saved = eigen.corrected_eigenvalues(sid)
        expect = ek_sum[sid] / ek_pos
        np.testing.assert_allclose(saved, expect, rtol=2e-3, atol=1e-5 * expect.max())
    # ... and `edit --eigenvalues ekfac` reads them
    plan = parse_plan({SITES[1]: 0.6}, olmo8.linear_sites())
    _, rows = apply_plan(
        olmo8.params,
        olmo8.linear_sites(),
        plan,
        eigen,
        EditOptions(eigenvalues="ekfac", compute_rank=False),
    )
    assert 0 < rows[0]["kept"] < rows[0]["components"]


def mean_ce(model, params, tokens, positions):
    logits = model.with_params(params).logits(tokens)
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)[:, :-1]))
    nll = -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    w = positions[:, :-1]
    return float((nll * w).sum() / w.sum())


def test_ablation_and_report_files(olmo8, eigen_dir, data, run8):
    out, report = run8
    from kfac_mem.analysis.sets import as_example_set

    clean = as_example_set("clean", data["clean"])
    params = jax.device_get(olmo8.params)
    base = mean_ce(olmo8, params, clean.tokens, clean.positions)
    assert report["ablation"]["baseline_loss"]["clean"] == pytest.approx(base, rel=1e-5)
    row = next(r for r in report["ablation"]["rows"] if r["band"] == "bottom50")
    eigen = load_eigen(eigen_dir)
    edited = params
    for sid in SITES:  # W' = U_G((U_Gᵀ W U_A) ⊙ M)U_Aᵀ, M = 0 on the bottom half of Π
        e = eigen.site(sid)
        site = next(s for s in olmo8.linear_sites() if s.id == sid)
        w = np.asarray(get_path(params, site.kernel_path), np.float64).T
        keep = select_band(Spectrum.kronecker(e.lam, e.mu), 50, 100).dense_mask()
        new = e.U_G @ ((e.U_G.T @ w @ e.U_A) * keep) @ e.U_A.T
        edited = set_path(edited, site.kernel_path, new.T.astype(np.float32))
    assert row["loss"]["clean"] == pytest.approx(
        mean_ce(olmo8, edited, clean.tokens, clean.positions), rel=1e-4
    )
    assert row["delta"]["clean"] == pytest.approx(row["loss"]["clean"] - base, abs=1e-5)
    assert {r["band"] for r in report["ablation"]["rows"]} == {b[0] for b in OPTIONS.bands}

    # report files
    parsed = read_report(out)
    assert parsed["layers"] == list(SITES) and parsed["clean"] == "clean"
    with open(os.path.join(out, "report.json")) as f:
        json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    for heading in (
        "## Findings",
        "## 1. Population spectrum",
        "## 2. Per-example curvature",
        "## 3. Activation band strength",
        "## 4. EK-FAC",
        "## 5. Band ablation",
    ):
        assert heading in md
    assert "| layer | set | N | median total" in md and "| memorized vs clean |" in md
    for name in ("spectra", "band_ratios", "per_example", "ablation"):
        path = os.path.join(out, "figures", f"{name}.png")
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    store = open_arrays(out)
    for key, meta in store.entries.items():
        assert list(store.read(key).shape) == meta["shape"], key
    ratios = parsed["activations"][SITES[0]]["memorized"]["ratio_vs_clean"]
    assert set(ratios) == {"kfac", "kfac_mu", "svd"} and all(len(v) == 4 for v in ratios.values())
    assert all(
        f["verdict"] in ("agrees", "contradicts", "inconclusive", "descriptive", "n/a")
        for f in parsed["findings"]
    )
    # an interrupted run's arrays (no index.json) are refused
    os.rename(os.path.join(out, "arrays", "index.json"), os.path.join(out, "arrays", "gone.json"))
    try:
        with pytest.raises(FileNotFoundError, match="incomplete"):
            open_arrays(out)
    finally:
        os.rename(
            os.path.join(out, "arrays", "gone.json"), os.path.join(out, "arrays", "index.json")
        )


def assert_same_top_up_to_ties(a, b, values, err_msg, rtol=1e-4):
    """Top-k component indices [n, k] of two runs agree except where ranks are tied: a position
    may differ only if its value equals (to rtol, the runs' agreement) another of the row's top-k
    values or the row's k-th value (the boundary, where a tied outsider can enter)."""
    for row_a, row_b, vals in zip(a, b, values):
        for p in np.nonzero(row_a != row_b)[0]:
            others = np.delete(vals, p)
            tied = np.isclose(others, vals[p], rtol=rtol, atol=1e-6 * np.abs(vals).max()).any()
            boundary = np.isclose(vals[p], vals[-1], rtol=rtol)
            assert tied or boundary, f"{err_msg}: rank {p} differs without a tie"
        assert len(set(row_a) ^ set(row_b)) <= 2 * np.isclose(vals, vals[-1], rtol=rtol).sum()


def test_one_and_eight_devices_agree(mesh1, eigen_dir, data, run8, tmp_path):
    out8, report8 = run8
    olmo1 = load_pretrained("tiny-olmo2", mesh=mesh1[0], rules=mesh1[1])
    eigen1 = str(tmp_path / "eigen1")
    shutil.copytree(eigen_dir, eigen1)
    options = AnalyzeOptions(
        **{**OPTIONS.__dict__, "ablation": "none", "figures": False, "row_chunk": None}
    )
    report1 = analyze(
        olmo1,
        eigen1,
        {"memorized": data["mem"], "clean": data["clean"]},
        out_dir=str(tmp_path / "out1"),
        options=options,
        log=None,
    )
    s1, s8 = open_arrays(str(tmp_path / "out1")), open_arrays(out8)
    assert s1.keys() == s8.keys()
    for key in s1:
        a, b = s1.read(key), s8.read(key)
        if key.endswith("top_index"):
            values = s1.read(key.removesuffix("top_index") + "top_values")
            assert_same_top_up_to_ties(a, b, values, err_msg=key)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max(), err_msg=key)
    for sid in SITES:
        e1, e8 = load_eigen(eigen1), load_eigen(eigen_dir)
        e1.use_corrected(str(tmp_path / "out1"))
        e8.use_corrected(out8)
        np.testing.assert_allclose(
            e1.corrected_eigenvalues(sid),
            e8.corrected_eigenvalues(sid),
            rtol=1e-4,
            atol=1e-6,
        )
        for name in ("memorized", "clean"):
            a = report1["per_example"][sid][name]["idiosyncrasy"]
            b = report8["per_example"][sid][name]["idiosyncrasy"]
            assert a["top_overlap"] == pytest.approx(b["top_overlap"])
            np.testing.assert_allclose(
                report1["activations"][sid][name]["strength"]["svd"]["rms"],
                report8["activations"][sid][name]["strength"]["svd"]["rms"],
                rtol=1e-4,
            )


def test_bad_input(olmo8, eigen_dir, data, run8, tmp_path):
    out, _ = run8
    sets = {"memorized": data["mem"], "clean": data["clean"]}
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj.*no eigenbasis"):
        analyze(
            olmo8,
            eigen_dir,
            sets,
            out_dir=str(tmp_path / "a"),
            options=OPTIONS,
            site_ids=["model.layers.0.self_attn.q_proj"],
            log=None,
        )
    with pytest.raises(ValueError, match="multiple of the 8 devices"):
        analyze(
            olmo8,
            eigen_dir,
            sets,
            out_dir=str(tmp_path / "b"),
            log=None,
            options=AnalyzeOptions(batch_size=4, progress=False),
        )
    with pytest.raises(ValueError, match="`clean` 'other'"):
        analyze(olmo8, eigen_dir, sets, out_dir=str(tmp_path / "c"), clean="other", log=None)
    with pytest.raises(FileExistsError, match="`overwrite`"):
        analyze(olmo8, eigen_dir, sets, out_dir=out, options=OPTIONS, log=None)
    with pytest.raises(ValueError, match="`rhos`"):
        AnalyzeOptions(rhos=(0.6, 1.5))
    with pytest.raises(ValueError, match="`mode`"):
        AnalyzeOptions(mode="gold")
    assert not os.path.exists(tmp_path / "a" / "report.json")


def test_cli(olmo8, eigen_dir, data, tmp_path, capsys):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    vocab = {f"w{i}": i for i in range(255)} | {"[UNK]": 255}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    ckpt = save_model(dataclasses.replace(olmo8, tokenizer=tok), str(tmp_path / "model"))
    text = tmp_path / "clean.txt"
    rng = np.random.RandomState(1)
    text.write_text(" ".join(f"w{i}" for i in rng.randint(0, 255, 130)))
    eigen = str(tmp_path / "eigen")
    shutil.copytree(eigen_dir, eigen)
    out = str(tmp_path / "out")
    base = [
        "analyze",
        "--model",
        ckpt,
        "--eigen",
        eigen,
        "--set",
        f"memorized={data['mem']}",
        "--top-k",
        "4",
        "--no-figures",
        "--ablation",
        "none",
        "--no-progress",
        "--out",
        out,
    ]
    rc = cli_main(
        [
            *base,
            "--set",
            f"clean={text}",
            "--layers",
            "1",
            "--projections",
            "up",
            "--mode",
            "empirical",
            "--rho",
            "0.5",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    report = read_report(out)
    assert report["layers"] == ["model.layers.1.mlp.up_proj"]
    assert report["sets"]["clean"]["kind"] == "text"
    assert report["sets"]["clean"]["window_length"] == SEQ  # text follows the window sets
    assert report["sets"]["clean"]["examples"] == 130 // SEQ
    assert report["options"]["mode"] == "empirical"
    assert report["spectrum"]["model.layers.1.mlp.up_proj"]["rho_cuts"][0]["rho"] == 0.5
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    assert "vs clean" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(data["mem_rows"][0]) + "\n" + json.dumps({"prefix_ids": [1]}) + "\n")
    rc = cli_main([*base, "--overwrite", "--set", f"clean={bad}"])
    assert rc == 2 and "bad.jsonl:2: missing field" in capsys.readouterr().err
    rc = cli_main(
        [
            *base,
            "--overwrite",
            "--set",
            f"clean={text}",
            "--layers",
            "model.layers.0.self_attn.q_proj",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "model.layers.0.self_attn.q_proj" in err and "no eigenbasis" in err
