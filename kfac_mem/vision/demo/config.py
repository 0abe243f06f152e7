"""`VisionDemoConfig`: everything the vision demo does, validated on construction, and its named
presets (`VisionDemoConfig.vit_digits()`, ...; registered by name in
`kfac_mem.demo.presets.DEMO_PRESETS`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from kfac_mem.collection.head_loss import MODES
from kfac_mem.experiments import ChoiceRule, Limit
from kfac_mem.validation import check_fields
from kfac_mem.vision.train import DIGITS_NOISY_RECIPE, TrainConfig
from models.presets import get_vit_config
from models.vit_config import ViTConfig


@dataclasses.dataclass(frozen=True)
class VisionDemoConfig:
    """Everything the vision demo does; the classmethods below are the named presets.

    Attributes:
      model_preset, model_overrides: the ViT (a `models.presets.PRESETS` name) and field overrides.
      data: an image source for `load_image_dataset` ("digits", "fashion-mnist", a path).
      n_train, n_val: seeded subsets of the data (None: all).
      noise_fraction, noise_seed: the label noise.
      train: the optimizer recipe; model_seed: initialization.
      selection_fraction: share of the training images held out of the factors for choosing the
        edit (the rest is the fit part, whose images the factors are collected on).
      factor_mode, factor_batch: collection label mode and batch size.
      projections, rhos: the sweep grid; layer sets are {first, last, first+last}.
      clean_tolerance: how far accuracy on the clean selection images may fall for a setting to
        be eligible.
      svd_drops: drop fractions tried for the SVD control.
    """

    name: str
    model_preset: str
    data: str
    train: TrainConfig
    model_overrides: tuple[tuple[str, Any], ...] = ()
    n_train: int | None = None
    n_val: int | None = None
    val_fraction: float = 0.25
    data_seed: int = 0
    noise_fraction: float = 0.1
    noise_seed: int = 0
    model_seed: int = 0
    selection_fraction: float = 0.3
    split_seed: int = 0
    factor_mode: str = "sampled"
    factor_seed: int = 0
    factor_batch: int = 64
    projections: tuple[str, ...] = ("fc1", "fc2")
    rhos: tuple[float, ...] = (0.6, 0.75, 0.9)
    clean_tolerance: float = 0.02
    svd_drops: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

    def __post_init__(self):
        check_fields(
            self,
            at_least_one=("n_train", "n_val", "factor_batch"),
            non_negative=("clean_tolerance",),
            fractions=("val_fraction", "noise_fraction", "selection_fraction"),
            rhos=("rhos",),
            drops=("svd_drops",),
            choices={"factor_mode": MODES},
        )
        if not self.projections or not self.rhos or not self.svd_drops:
            raise ValueError("`projections`, `rhos` and `svd_drops` must be non-empty.")

    def choice_rule(self, base_clean_accuracy: float) -> ChoiceRule:
        """Lowest selection-part memorization among settings whose clean selection accuracy stays
        within `clean_tolerance` of the unedited model's; ties: higher clean accuracy, then larger
        ρ (the smaller edit). When none does, the one closest to the limit (highest accuracy)."""
        return ChoiceRule(
            objective=("selection_noisy_label_memorized", "-selection_clean_accuracy", "-rho"),
            limits=(
                Limit("selection_clean_accuracy", lo=base_clean_accuracy - self.clean_tolerance),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_overrides"] = dict(self.model_overrides)
        return d

    def model_config(self) -> ViTConfig:
        config = get_vit_config(self.model_preset)
        return config.replace(**dict(self.model_overrides)) if self.model_overrides else config

    # --- named presets (registered in kfac_mem.demo.presets) -------------------------------------

    @classmethod
    def vit_digits(cls) -> VisionDemoConfig:
        """scikit-learn digits, 10% noisy labels, the `vit-digits` ViT at patch 2.

        Patch 2 (16 patches + CLS) rather than the model preset's 4 (4 + CLS): with more patch
        tokens, as in a real ViT, the first-layer edit separates memorized labels from shared
        features far better (noisy labels memorized 60% -> 30% instead of 73% -> 65%, see
        docs/vision.md), at ~80 s instead of ~50 s on 2 CPU cores.
        """
        return cls(
            name="vit-digits",
            model_preset="vit-digits",
            data="digits",
            train=DIGITS_NOISY_RECIPE,
            model_overrides=(("patch_size", 2),),
        )

    @classmethod
    def vit_fashion_mnist(cls) -> VisionDemoConfig:
        """5k Fashion-MNIST training images keep it to minutes on CPU (see
        `ViTConfig.vit_fashion_mnist`)."""
        return cls(
            name="vit-fashion-mnist",
            model_preset="vit-fashion-mnist",
            data="fashion-mnist",
            train=TrainConfig(epochs=80, batch_size=64, learning_rate=2e-3),
            n_train=5000,
            n_val=2000,
        )

    @classmethod
    def vit_tiny(cls) -> VisionDemoConfig:
        """CI size: a 2-layer d-32 ViT on 400 digits, 20% noise, trained to memorize."""
        return cls(
            name="vit-tiny",
            model_preset="vit-digits",
            data="digits",
            train=TrainConfig(epochs=60, batch_size=32, learning_rate=3e-3),
            model_overrides=(("hidden_size", 32), ("num_layers", 2), ("intermediate_size", 128)),
            n_train=400,
            n_val=200,
            noise_fraction=0.2,
            factor_batch=32,
            rhos=(0.6, 0.8),
            svd_drops=(0.25, 0.5, 0.75),
        )
