"""ViT: logits parity with transformers' ViTForImageClassification, HF export/reload, the curvature
protocol (sites, CLS-only targets, captured inputs and output gradients), sharding, refusals."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfac_mem.protocol import CurvatureModel
from models.safetensors_io import SafetensorsFile, write_safetensors
from models.sites import get_path
from models.vision_model import init_vision_model
from models.vit_hf import config_from_hf, export_vit_hf, load_vit_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.hf

HF_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    image_size=8,
    patch_size=2,
    num_channels=3,
    num_labels=5,
)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random HF ViT classifier (every weight and bias perturbed away from its init) on disk."""
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**HF_CONFIG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp("vit_hf"))
    model.save_pretrained(path)
    return path


def images(n=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 8, 8, 3)).astype(np.float32)


def hf_logits(path, x):
    model = transformers.ViTForImageClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()


@pytest.mark.parametrize("mesh_name", [None, "mesh8"])
def test_logits_match_transformers(hf_dir, mesh_name, request):
    mesh, rules = request.getfixturevalue(mesh_name) if mesh_name else (None, None)
    x = images()
    ref = hf_logits(hf_dir, x)
    model = load_vit_hf(hf_dir, mesh, rules)
    out = np.asarray(model.logits(x))
    assert out.shape == (8, 5)
    assert np.abs(ref).max() > 0.1  # a non-degenerate reference
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mesh_name", ["mesh1", "mesh8"])
def test_export_reload_round_trip(hf_dir, tmp_path, mesh_name, request):
    mesh, rules = request.getfixturevalue(mesh_name)
    model = load_vit_hf(hf_dir, mesh, rules)
    out_dir = export_vit_hf(model, str(tmp_path / "export"))
    # transformers loads our export and computes the same logits as the original checkpoint.
    x = images(seed=1)
    np.testing.assert_allclose(hf_logits(out_dir, x), hf_logits(hf_dir, x), atol=1e-6, rtol=0)
    # The export holds exactly the tensors of the original, bit for bit.
    a, b = (
        SafetensorsFile(os.path.join(hf_dir, "model.safetensors")),
        SafetensorsFile(os.path.join(out_dir, "model.safetensors")),
    )
    assert sorted(a.names) == sorted(b.names)
    for name in a.names:
        np.testing.assert_array_equal(
            np.asarray(a.array(name)), np.asarray(b.array(name)), err_msg=name
        )
    # And reloading our export gives the same parameters.
    again = load_vit_hf(out_dir, mesh, rules)
    for (path, u), v in zip(
        jax.tree_util.tree_leaves_with_path(model.params), jax.tree_util.tree_leaves(again.params)
    ):
        np.testing.assert_array_equal(
            np.asarray(u), np.asarray(v), err_msg=jax.tree_util.keystr(path)
        )


def test_preset_model_exports_to_transformers(tmp_path):
    """A model initialized here (not loaded) exports a checkpoint transformers agrees with."""
    model = init_vision_model("vit-tiny-test", seed=3)
    out_dir = export_vit_hf(model, str(tmp_path / "tiny"))
    with open(os.path.join(out_dir, "config.json")) as f:
        assert json.load(f)["architectures"] == ["ViTForImageClassification"]
    x = np.random.default_rng(2).uniform(size=(4, 8, 8, 1)).astype(np.float32)
    hf = transformers.ViTForImageClassification.from_pretrained(out_dir).eval()
    with torch.no_grad():
        ref = hf(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
    np.testing.assert_allclose(np.asarray(model.logits(x)), ref, atol=1e-5, rtol=0)


def test_sites_are_hf_paths_with_kernels(hf_dir):
    model = load_vit_hf(hf_dir)
    assert isinstance(model, CurvatureModel)
    sites = model.linear_sites()
    names = set(SafetensorsFile(os.path.join(hf_dir, "model.safetensors")).names)
    assert len(sites) == 2 * 6
    assert (
        sum(leaf.size for leaf in jax.tree_util.tree_leaves(model.params))
        == model.config.num_params()
    )
    for s in sites:
        assert f"{s.id}.weight" in names and f"{s.id}.bias" in names, s.id
        assert get_path(model.params, s.kernel_path).shape == (s.d_in, s.d_out)
    by_proj = {(s.layer, s.projection): s for s in sites}
    assert by_proj[(0, "fc1")].id == "vit.encoder.layer.0.intermediate.dense"
    assert by_proj[(1, "fc2")].id == "vit.encoder.layer.1.output.dense"
    assert (by_proj[(0, "fc1")].d_in, by_proj[(0, "fc1")].d_out) == (32, 48)
    groups = {p: by_proj[(0, p)].input_group for p in ("q", "k", "v", "o", "fc1", "fc2")}
    assert groups["q"] == groups["k"] == groups["v"]
    assert len({groups["q"], groups["o"], groups["fc1"], groups["fc2"]}) == 4
    assert by_proj[(0, "q")].input_group != by_proj[(1, "q")].input_group


def test_protocol_head_targets_and_output_gradients(hf_dir):
    """hidden @ head = logits at CLS; labels/weights only at CLS; and the captured input a and the
    perturbation gradient g of a site satisfy ∂L/∂kernel = Σ_t a_tᵀ g_t (what K-FAC relies on)."""
    model = load_vit_hf(hf_dir)
    x = images(4, seed=3)
    y = np.array([0, 3, 1, 4])
    inputs, labels, weights = model.loss_targets((x, y))
    s = model.config.seq_len
    assert labels.shape == weights.shape == (4, s)
    np.testing.assert_array_equal(np.asarray(weights[:, 0]), 1.0)
    assert float(jnp.sum(weights)) == 4.0
    np.testing.assert_array_equal(np.asarray(labels[:, 0]), y)
    _, labels2, _ = model.loss_targets({"images": x, "labels": y})
    np.testing.assert_array_equal(np.asarray(labels2), np.asarray(labels))

    sites = {(t.layer, t.projection): t for t in model.linear_sites()}
    checked = [sites[(0, "fc1")], sites[(1, "fc2")]]
    ids = tuple(t.id for t in checked)
    hidden, captured = jax.jit(lambda p, v: model.hidden_states(p, v, capture=ids))(
        model.params, inputs
    )
    assert hidden.shape == (4, s, 32)
    logits = hidden @ model.head_kernel(model.params) + model.head_bias(model.params)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(model.logits(x)), atol=1e-5)

    def loss_of(params, site_id, pert):
        h, _ = model.hidden_states(params, inputs, {site_id: pert})
        z = h @ model.head_kernel(params) + model.head_bias(params)
        logp = jax.nn.log_softmax(z, -1)
        return -jnp.sum(weights * jnp.take_along_axis(logp, labels[..., None], -1)[..., 0])

    grads = jax.jit(jax.grad(loss_of, argnums=(0, 2)), static_argnums=1)
    for site in checked:
        a = captured[site.id]
        assert a.shape == (4, s, site.d_in)
        dparams, g = grads(model.params, site.id, jnp.zeros((4, s, site.d_out)))
        dkernel = get_path(dparams, site.kernel_path)
        np.testing.assert_allclose(
            np.asarray(jnp.einsum("bsi,bso->io", a, g)),
            np.asarray(dkernel),
            atol=1e-5,
            rtol=1e-4,
            err_msg=site.id,
        )
        patches = float(jnp.abs(g[:, 1:]).max())
        if site.layer == 1:  # last block's MLP is position-wise: only CLS carries loss gradient
            assert patches == 0.0
        else:  # earlier blocks reach CLS through attention
            assert patches > 0.0


def test_config_refusals(hf_dir, tmp_path):
    with open(os.path.join(hf_dir, "config.json")) as f:
        base = json.load(f)
    assert config_from_hf(base).num_classes == 5
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        config_from_hf({**base, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="use_rope=True"):
        config_from_hf({**base, "use_rope": True})
    with pytest.raises(ValueError, match="ViTForMaskedImageModeling"):
        config_from_hf({**base, "architectures": ["ViTForMaskedImageModeling"]})
    with pytest.raises(ValueError, match="not square"):
        config_from_hf({**base, "image_size": [8, 16]})
    # A checkpoint with extra tensors (a pooler) is refused rather than silently truncated.
    pooled = str(tmp_path / "pooled")
    export_vit_hf(load_vit_hf(hf_dir), pooled)
    st = SafetensorsFile(os.path.join(pooled, "model.safetensors"))
    tensors = {n: np.array(st.array(n)) for n in st.names}
    tensors["vit.pooler.dense.weight"] = np.zeros((32, 32), np.float32)
    write_safetensors(os.path.join(pooled, "model.safetensors"), tensors)
    with pytest.raises(ValueError, match=r"vit\.pooler\.dense\.weight"):
        load_vit_hf(pooled)
