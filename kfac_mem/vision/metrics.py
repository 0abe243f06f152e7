"""Predictions and the paper's Table-2 measures for a classifier trained on noisy labels.

Table 2 reports, for the training images whose label was replaced: the share the model predicts
with that (noisy) label ("memorized"), the share it predicts with the true label ("train GT
accuracy"); and validation accuracy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from kfac_mem.sharding import data_axes


def batch_sharding(model) -> tuple[NamedSharding | None, int]:
    """(sharding that splits dimension 0 over the mesh's data axes, number of data shards)."""
    if model.mesh is None:
        return None, 1
    names = data_axes(model.mesh, model.rules or ())
    shards = int(np.prod([model.mesh.shape[a] for a in names])) if names else 1
    spec = PartitionSpec(names if len(names) > 1 else (names[0] if names else None))
    return NamedSharding(model.mesh, spec), shards


@functools.lru_cache(maxsize=16)
def _predict_fn(model):
    return jax.jit(lambda params, x: jnp.argmax(model.apply(params, x), axis=-1))


def predict(model, params, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Argmax class [N] (int32) of `images` [N, H, W, C], in batches sharded over the data axes."""
    sharding, shards = batch_sharding(model)
    # One padded batch shape for the whole call (fewer compilations), a multiple of the shards.
    batch_size = min(
        max(shards, batch_size - batch_size % shards), len(images) + (-len(images) % shards)
    )
    fn = _predict_fn(model.with_params(None))  # cache key without the weights
    out = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start : start + batch_size], np.float32)
        n = len(x)
        pad = batch_size - n
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
        x = jax.device_put(x, sharding) if sharding is not None else jnp.asarray(x)
        out.append(np.asarray(fn(params, x))[:n])
    return np.concatenate(out).astype(np.int32) if out else np.zeros((0,), np.int32)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else float("nan")


def noise_report(
    train_pred: np.ndarray,
    noisy_labels: np.ndarray,
    true_labels: np.ndarray,
    noise_mask: np.ndarray,
    val_pred: np.ndarray,
    val_labels: np.ndarray,
) -> dict[str, float]:
    """The Table-2 layout (fractions in [0, 1]).

    Args:
      train_pred, noisy_labels, true_labels, noise_mask: [N_train] predictions, the labels trained
        on, the true labels, and True where the label was replaced.
      val_pred, val_labels: [N_val].
    Returns: noisy_label_memorized (noisy images predicted with their noisy label),
      noisy_true_label_recovered (noisy images predicted with their true label),
      clean_train_accuracy (the other training images), val_accuracy, n_noisy.
    """
    mask = np.asarray(noise_mask, bool)
    pred = np.asarray(train_pred)
    return {
        "noisy_label_memorized": accuracy(pred[mask], np.asarray(noisy_labels)[mask]),
        "noisy_true_label_recovered": accuracy(pred[mask], np.asarray(true_labels)[mask]),
        "clean_train_accuracy": accuracy(pred[~mask], np.asarray(true_labels)[~mask]),
        "val_accuracy": accuracy(val_pred, val_labels),
        "n_noisy": int(mask.sum()),
    }


def evaluate_noisy_training(
    model, params, data, noisy_labels: np.ndarray, noise_mask: np.ndarray, batch_size: int = 1024
) -> dict[str, float]:
    """`noise_report` of `params` on an `ImageDataset` whose training labels were noised."""
    train_pred = predict(model, params, data.train_images, batch_size)
    val_pred = predict(model, params, data.val_images, batch_size)
    return noise_report(
        train_pred, noisy_labels, data.train_labels, noise_mask, val_pred, data.val_labels
    )
