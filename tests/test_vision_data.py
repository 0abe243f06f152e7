"""Vision data: exact seeded label noise, the no-download loaders, sharded training, Table-2 metrics."""

from __future__ import annotations

import gzip
import os

import jax
import numpy as np
import pytest

from kfac_mem.vision import data as vdata
from kfac_mem.vision.metrics import noise_report, predict
from kfac_mem.vision.noise import inject_label_noise
from kfac_mem.vision.train import TrainConfig, train_classifier
from models.vision_model import init_vision_model

# --- label noise -------------------------------------------------------------------------------


@pytest.mark.parametrize("n,fraction,classes", [(1347, 0.1, 10), (1000, 0.25, 3), (7, 0.5, 2)])
def test_noise_changes_exactly_round_fraction_each_to_another_label(n, fraction, classes):
    labels = np.random.default_rng(5).integers(0, classes, n).astype(np.int32)
    noisy, mask = inject_label_noise(labels, fraction, classes, seed=1)
    assert noisy.dtype == np.int32 and mask.dtype == bool and noisy.shape == mask.shape == (n,)
    assert mask.sum() == int(np.floor(fraction * n + 0.5))
    np.testing.assert_array_equal(
        noisy != labels, mask
    )  # changed exactly where masked, never to itself
    np.testing.assert_array_equal(noisy[~mask], labels[~mask])
    assert noisy.min() >= 0 and noisy.max() < classes


def test_noise_is_seeded_and_seeds_differ():
    labels = np.arange(2000, dtype=np.int64) % 10
    a = inject_label_noise(labels, 0.1, 10, seed=7)
    b = inject_label_noise(labels, 0.1, 10, seed=7)
    c = inject_label_noise(labels, 0.1, 10, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[0], c[0])


def test_noise_edges_and_uniform_other_labels():
    labels = np.zeros(90_000, np.int32)
    assert not inject_label_noise(labels, 0.0, 10)[1].any()
    noisy, mask = inject_label_noise(labels, 1.0, 10, seed=3)
    assert mask.all()
    counts = np.bincount(noisy, minlength=10)
    assert counts[0] == 0
    # Uniform over the 9 other classes: 10,000 each, binomial sd ≈ 94; allow 5 sd.
    assert np.abs(counts[1:] - 10_000).max() < 470
    with pytest.raises(ValueError, match="fraction"):
        inject_label_noise(labels, 1.5, 10)
    with pytest.raises(ValueError, match="labels"):
        inject_label_noise(np.array([0, 10]), 0.5, 10)


# --- loaders ----------------------------------------------------------------------------------


def test_digits_loader_shapes_ranges_and_split():
    d = vdata.load_digits(val_fraction=0.25, seed=0)
    assert d.train_images.shape == (1348, 8, 8, 1) and d.val_images.shape == (449, 8, 8, 1)
    assert d.train_images.dtype == np.float32 and d.train_labels.dtype == np.int32
    assert d.train_images.min() == 0.0 and d.train_images.max() == 1.0
    assert set(np.unique(d.train_labels)) == set(range(10)) == set(np.unique(d.val_labels))
    assert d.label_names == tuple(str(i) for i in range(10))
    # The split is a seeded partition of all 1,797 images: no image in both halves.
    again = vdata.load_digits(val_fraction=0.25, seed=0)
    np.testing.assert_array_equal(again.val_images, d.val_images)
    other = vdata.load_digits(val_fraction=0.25, seed=1)
    assert not np.array_equal(other.val_labels, d.val_labels)
    flat = lambda x: {row.tobytes() for row in x.reshape(len(x), -1)}  # noqa: E731
    assert len(flat(d.train_images) & flat(d.val_images)) < 5  # (digits holds a few duplicates)


def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    blob = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(blob)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_loader_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    parts = {
        "train": (rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)),
        "t10k": (rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)),
    }
    suffix = ".gz" if compress else ""
    for split, (x, y) in parts.items():
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", x, compress)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte{suffix}", y, compress)
    d = vdata.load_image_dataset(str(tmp_path))
    assert d.train_images.shape == (12, 28, 28, 1) and d.val_images.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(d.train_images[..., 0] * 255.0, parts["train"][0], atol=1e-4)
    np.testing.assert_array_equal(d.val_labels, parts["t10k"][1])
    (tmp_path / f"t10k-labels-idx1-ubyte{suffix}").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        vdata.load_idx(str(tmp_path))


def test_fashion_mnist_missing_names_the_package():
    if os.path.isdir(vdata.FASHION_MNIST_DIR):
        d = vdata.load_image_dataset("fashion-mnist")
        assert d.train_images.shape == (60_000, 28, 28, 1) and d.val_images.shape == (
            10_000,
            28,
            28,
            1,
        )
        assert d.label_names[0] == "T-shirt/top"
    else:
        with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
            vdata.load_image_dataset("fashion-mnist")


def test_npz_loader(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 6, 6, 3)).astype(np.uint8)
    y = np.arange(20) % 4
    np.savez(tmp_path / "a.npz", images=x, labels=y)
    d = vdata.load_image_dataset(str(tmp_path / "a.npz"), val_fraction=0.25)
    assert d.train_images.shape == (15, 6, 6, 3) and d.val_images.shape == (5, 6, 6, 3)
    assert d.num_classes == 4 and d.train_images.min() >= 0.0 and d.train_images.max() <= 1.0
    np.savez(
        tmp_path / "b.npz",
        images=x[:, :, :, 0] / 255.0,
        labels=y,
        val_images=x[:3, :, :, 0],
        val_labels=y[:3],
    )
    d = vdata.load_npz(str(tmp_path / "b.npz"))
    assert d.train_images.shape == (20, 6, 6, 1) and d.val_images.shape == (3, 6, 6, 1)
    np.savez(tmp_path / "c.npz", pixels=x, labels=y)
    with pytest.raises(ValueError, match="images"):
        vdata.load_npz(str(tmp_path / "c.npz"))
    np.savez(tmp_path / "d.npz", images=x * 2.0, labels=y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vdata.load_npz(str(tmp_path / "d.npz"))


def test_image_folder_loader(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    written = {}
    for split in ("train", "val"):
        for cls in ("cat", "dog", "emu"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3 if split == "train" else 1):
                arr = rng.integers(0, 256, (5, 5)).astype(np.uint8)
                Image.fromarray(arr, mode="L").save(folder / f"{i}.png")
                written[(split, cls, i)] = arr
    d = vdata.load_image_dataset(str(tmp_path))
    assert d.label_names == ("cat", "dog", "emu")
    assert d.train_images.shape == (9, 5, 5, 1) and d.val_images.shape == (3, 5, 5, 1)
    np.testing.assert_array_equal(d.train_labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(
        d.train_images[3, ..., 0] * 255.0, written[("train", "dog", 0)], atol=1e-3
    )
    rgb = vdata.load_image_folder(str(tmp_path / "train"), val_fraction=1 / 3, channels=3)
    assert rgb.train_images.shape == (6, 5, 5, 3) and rgb.val_images.shape == (3, 5, 5, 3)


# --- training and metrics ---------------------------------------------------------------------


def test_noise_report_counts():
    true = np.array([0, 1, 2, 3, 4, 5])
    noisy = np.array([0, 1, 2, 9, 9, 9])
    mask = noisy != true
    pred = np.array(
        [0, 1, 0, 9, 4, 7]
    )  # one clean error; noisy: one memorized, one true, one other
    r = noise_report(pred, noisy, true, mask, np.array([1, 1]), np.array([1, 0]))
    assert r["noisy_label_memorized"] == pytest.approx(1 / 3)
    assert r["noisy_true_label_recovered"] == pytest.approx(1 / 3)
    assert r["clean_train_accuracy"] == pytest.approx(2 / 3)
    assert r["val_accuracy"] == 0.5 and r["n_noisy"] == 3


@pytest.mark.slow  # training also runs, at a smaller size, in test_vision_demo's end-to-end test
def test_short_sharded_training_on_digits_learns(mesh8):
    """A few seconds of training, batch split over 8 devices with FSDP-sharded parameters, is far
    above chance (10%); the run is seeded and leaves the starting weights intact."""
    mesh, rules = mesh8
    data = vdata.load_digits()
    model = init_vision_model("vit-tiny-test", seed=0, mesh=mesh, rules=rules, patch_size=4)
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.params):
        assert leaf.sharding.mesh == mesh, jax.tree_util.keystr(path)
    before = jax.tree_util.tree_map(np.asarray, model.params)
    cfg = TrainConfig(epochs=6, batch_size=64, learning_rate=3e-3, warmup_epochs=1)
    params, history = train_classifier(model, data.train_images, data.train_labels, cfg)
    pred = predict(model, params, data.val_images)  # 449 images: not a multiple of 8 shards
    assert pred.shape == (449,) and pred.dtype == np.int32
    assert np.mean(pred == data.val_labels) > 0.6, history
    assert history["loss"][-1] < history["loss"][0]
    assert history["steps"] == 6 * (len(data.train_labels) // 64)
    leaf = params["vit"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"]
    assert leaf.sharding.mesh == mesh and leaf.sharding.spec[0] == "fsdp"
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(model.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    again, _ = train_classifier(model, data.train_images, data.train_labels, cfg)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="multiple of the 8 data"):
        train_classifier(model, data.train_images, data.train_labels, TrainConfig(batch_size=60))
