"""ViT through the shared pipeline: image collection (CLS only) against brute force on 1 and 8
devices, resume identity for image data, and a tiny end-to-end `run_vision_demo`."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfac_mem.collection.config import CollectConfig
from kfac_mem.collection.run import collect
from kfac_mem.collection.sites import select_sites
from kfac_mem.data import LabelledExamples
from models import init_vision_model

IDS = [
    "vit.encoder.layer.0.attention.attention.query",
    "vit.encoder.layer.0.intermediate.dense",
    "vit.encoder.layer.1.output.dense",
]


def examples(n=16, seed=0) -> LabelledExamples:
    rng = np.random.RandomState(seed)
    images = rng.rand(n, 8, 8, 1).astype(np.float32)
    labels = rng.randint(0, 10, n).astype(np.int32)
    return LabelledExamples.from_arrays(images, labels, "random")


@pytest.fixture(scope="module")
def vit8(mesh8):
    return init_vision_model("vit-tiny-test", seed=1, mesh=mesh8[0], rules=mesh8[1])


@pytest.fixture(scope="module")
def vit1(mesh1):
    return init_vision_model("vit-tiny-test", seed=1, mesh=mesh1[0], rules=mesh1[1])


def brute_force(model, data: LabelledExamples, site_ids):
    """A = mean over images of a aᵀ at the CLS position; G = mean of g gᵀ with g the per-example
    gradient of that image's CE (gold label) w.r.t. the site's CLS-position output."""
    params = jax.device_get(model.params)
    sites = {s.id: s for s in model.linear_sites()}
    S = model.config.seq_len

    @functools.partial(jax.jit, static_argnums=0)
    def one(sid, image, label):
        def loss(pert):  # pert [1, S, d_out]
            hidden, caps = model.hidden_states(params, image[None], {sid: pert}, capture=[sid])
            logits = hidden[0, 0] @ model.head_kernel(params) + model.head_bias(params)
            return -jax.nn.log_softmax(logits)[label], caps[sid][0, 0]

        g, a = jax.grad(loss, has_aux=True)(jnp.zeros((1, S, sites[sid].d_out)))
        return g[0, 0], a

    A, G = {}, {}
    for sid in site_ids:
        rows = [one(sid, jnp.asarray(x), int(y)) for x, y in zip(data.inputs, data.labels)]
        g = np.stack([np.asarray(r[0], np.float64) for r in rows])
        a = np.stack([np.asarray(r[1], np.float64) for r in rows])
        A[sid], G[sid] = a.T @ a / len(a), g.T @ g / len(g)
    return A, G


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.multidevice
def test_image_collect_cls_only_matches_brute_force_on_1_and_8_devices(vit1, vit8, tmp_path):
    data = examples()
    sites = select_sites(vit8.linear_sites(), ids=IDS)
    cfg = CollectConfig(mode="empirical", batch_size=8)
    r8 = collect(vit8, data, sites, str(tmp_path / "eight"), cfg, progress=False)
    r1 = collect(vit1, data, sites, str(tmp_path / "one"), cfg, progress=False)
    A, G = brute_force(vit8, data, IDS)
    assert r8.n_tokens == r1.n_tokens == 16  # one CLS position per image
    for sid in IDS:
        assert rel(r8[sid].A, A[sid]) < 1e-5, sid
        assert rel(r8[sid].G, G[sid]) < 1e-5, sid
        assert rel(r1[sid].A, r8[sid].A) < 1e-5, sid
        assert rel(r1[sid].G, r8[sid].G) < 1e-5, sid
    meta = r8.metadata
    assert meta["corpus"]["n_examples"] == 16 and meta["corpus"]["kind"] == "labelled"
    # Sampled labels: same draws on 1 and 8 devices.
    cs = CollectConfig(mode="sampled", batch_size=8, seed=3)
    s8 = collect(vit8, data, sites, str(tmp_path / "s8"), cs, progress=False)
    s1 = collect(vit1, data, sites, str(tmp_path / "s1"), cs, progress=False)
    for sid in IDS:
        assert rel(s1[sid].G, s8[sid].G) < 1e-5, sid
        assert rel(s8[sid].G, G[sid]) > 1e-3  # the model's own labels, not the gold ones


def test_image_collect_resumes_and_refuses_other_images(vit8, tmp_path):
    sites = select_sites(vit8.linear_sites(), ids=IDS[1:])
    cfg = CollectConfig(mode="empirical", batch_size=8, save_every=1)
    data = examples(n=24)
    full = collect(vit8, data, sites, str(tmp_path / "full"), cfg, progress=False)
    part = collect(vit8, data, sites, str(tmp_path / "part"), cfg, progress=False, stop_after=1)
    assert not part.complete
    done = collect(vit8, data, sites, str(tmp_path / "part"), cfg, progress=False)
    assert done.complete and done.n_tokens == full.n_tokens == 24
    for sid in IDS[1:]:
        np.testing.assert_allclose(done[sid].A, full[sid].A, rtol=1e-6)
        np.testing.assert_allclose(done[sid].G, full[sid].G, rtol=1e-6)
    with pytest.raises(ValueError, match="corpus"):
        collect(vit8, examples(n=24, seed=5), sites, str(tmp_path / "part"), cfg, progress=False)


def test_tiny_vision_demo_end_to_end(mesh8, tmp_path):
    from kfac_mem.vision.demo import VisionDemoConfig, run_vision_demo
    from models import load_pretrained
    from models.checkpoint import read_model_info

    out = tmp_path / "demo"
    s = run_vision_demo(VisionDemoConfig.vit_tiny(), str(out), *mesh8)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["noisy_label_memorized_after"] == s["noisy_label_memorized_after"]
    for key in (
        "noisy_label_memorized_before",
        "noisy_label_memorized_after",
        "val_accuracy_before",
        "val_accuracy_after",
        "true_label_recovered_before",
        "true_label_recovered_after",
    ):
        assert 0.0 <= on_disk[key] <= 1.0, key
    assert isinstance(on_disk["targets_met"], bool)
    # The trained model memorized its noisy labels, and the chosen K-FAC edit removes some of it.
    assert s["noisy_label_memorized_before"] > 0.5
    assert s["noisy_label_memorized_after"] < s["noisy_label_memorized_before"]
    assert s["true_label_recovered_after"] >= s["true_label_recovered_before"]
    # Sweep: {first, last, first+last} x rhos, chosen from it on the selection part only.
    assert len(s["sweep"]) == 3 * 2
    chosen = s["chosen"]
    row = next(
        r for r in s["sweep"] if r["layers"] == chosen["layers"] and r["rho"] == chosen["rho"]
    )
    assert (
        row["selection_noisy_label_memorized"]
        == min(
            r["selection_noisy_label_memorized"]
            for r in s["sweep"]
            if r["eligible"] == row["eligible"]
        )
        or not row["eligible"]
    )
    # The K-FAC edit touched exactly the chosen fc1/fc2 matrices; the SVD control the same ones.
    ids = {r["id"] for r in s["kfac_edit_report"]}
    assert ids == {r["id"] for r in s["svd"]["report"]}
    assert len(ids) == 2 * len(chosen["layers"])
    assert s["factors"]["n_positions"] == s["data"]["n_fit"]  # CLS only; the last batch is padded
    assert set(s["rows"]) == {"before", "kfac", "svd"}
    report = (out / "report.md").read_text()
    assert "| K-FAC (L" in report and "| SVD (same matrices" in report
    # Both checkpoints load back through `load_pretrained` (the path `kfac-mem edit` takes).
    mesh, rules = mesh8
    model = load_pretrained(str(out / "model"), mesh=mesh, rules=rules)
    assert model.fingerprint() == read_model_info(str(out / "model"))["fingerprint"]
    edited = load_pretrained(str(out / "edited"), mesh=mesh, rules=rules)
    assert edited.fingerprint() != model.fingerprint()
    assert sorted(read_model_info(str(out / "edited"))["metadata"]["edit"]["plan"]) == sorted(ids)
