"""The images as trained on: load them (no download), the noisy labels, the fit / selection split."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from kfac_mem.vision.data import FASHION_MNIST_DIR, ImageDataset, load_image_dataset
from kfac_mem.vision.demo.config import VisionDemoConfig
from kfac_mem.vision.noise import inject_label_noise


def load_data(config: VisionDemoConfig) -> ImageDataset:
    if config.data == "fashion-mnist" and not os.path.isdir(FASHION_MNIST_DIR):
        raise FileNotFoundError(
            f"The vit-fashion-mnist preset reads Fashion-MNIST from {FASHION_MNIST_DIR} (nothing "
            f"downloads at run time). Install it with `sudo apt-get install "
            f"dataset-fashion-mnist` (Debian/Ubuntu), or use the 'vit-digits' preset."
        )
    data = load_image_dataset(config.data, config.val_fraction, config.data_seed)
    if config.n_train is not None or config.n_val is not None:
        data = data.subset(config.n_train, config.n_val, seed=config.data_seed)
    return data


def split_fit_selection(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (fit, selection) indices of the training images; `round(fraction·n)` selection.

    The stream is keyed apart from the label noise's (`default_rng(seed)`), so the split is
    independent of which images were noised (it never looks at the noise mask)."""
    perm = np.random.default_rng((seed, 0x5E1EC7)).permutation(n)
    k = int(np.floor(fraction * n + 0.5))
    return np.sort(perm[k:]), np.sort(perm[:k])


@dataclasses.dataclass(frozen=True)
class Noisy:
    """The training set as trained on, and the split."""

    data: ImageDataset
    noisy_labels: np.ndarray
    noise_mask: np.ndarray
    fit: np.ndarray
    selection: np.ndarray


def noisy_training_set(config: VisionDemoConfig, log: Callable[[str], None]) -> Noisy:
    """The images, a seeded `noise_fraction` of the training labels replaced, and the fit /
    selection split of the training images."""
    data = load_data(config)
    noisy_labels, mask = inject_label_noise(
        data.train_labels, config.noise_fraction, data.num_classes, config.noise_seed
    )
    fit, sel = split_fit_selection(len(noisy_labels), config.selection_fraction, config.split_seed)
    log(
        f"   {data.source}: {len(noisy_labels)} training images ({int(mask.sum())} noisy "
        f"labels), {len(data.val_labels)} validation; fit {len(fit)} / selection {len(sel)}"
    )
    return Noisy(data, noisy_labels, mask, fit, sel)
