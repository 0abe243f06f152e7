"""Exact, seeded label noise: a fixed fraction of labels replaced by a uniformly random other label.

This is the Zhang et al. (2017) random-label setup the paper uses for its ViT (10% of ImageNet
training labels): exactly `round(fraction · N)` images, chosen uniformly without replacement, get a
label drawn uniformly from the `num_classes − 1` classes that differ from their true one.
"""

from __future__ import annotations

import numpy as np


def inject_label_noise(
    labels: np.ndarray, fraction: float, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Replace a fixed fraction of `labels` [N] by random *other* labels.

    Args:
      labels: true class ids [N] in [0, num_classes).
      fraction: share of labels to change, in [0, 1]; exactly floor(fraction·N + 0.5) change.
      num_classes: number of classes (≥ 2).
      seed: the same seed always changes the same images to the same labels.

    Returns:
      (noisy labels [N] int32, mask [N] bool, True where the label was changed).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must be a 1-D integer array, got {labels.dtype} {labels.shape}."
        )
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction}.")
    if num_classes < 2:
        raise ValueError(
            f"`num_classes` must be at least 2 to pick another label, got {num_classes}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}]."
        )
    n = labels.shape[0]
    k = int(np.floor(fraction * n + 0.5))
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(n)[:k]
    # An offset in 1..C-1 added modulo C is uniform over the C-1 other classes.
    offsets = rng.integers(1, num_classes, size=k)
    noisy = labels.astype(np.int32).copy()
    noisy[chosen] = (noisy[chosen] + offsets) % num_classes
    mask = np.zeros(n, bool)
    mask[chosen] = True
    return noisy, mask
