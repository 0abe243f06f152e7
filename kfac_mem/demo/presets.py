"""The one registry of demo presets: what `kfac-mem demo --preset NAME` runs.

Each `DemoPreset` names its experiment (which driver runs it), the config's named constructor
(`DemoConfig.tiny`, `SmolDemoConfig.smollm2`, `VisionDemoConfig.vit_digits`, ...) and a one-line
description that `kfac-mem demo --help` shows. A new demo preset is a classmethod on its config and
one entry here (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kfac_mem.demo.config import DemoConfig
from kfac_mem.demo.smollm2 import SmolDemoConfig
from kfac_mem.vision.demo.config import VisionDemoConfig

# experiment -> what runs it: the LM demo (`demo.pipeline.run_demo`), the SmolLM2 demo
# (`demo.smollm2.run_smollm2_demo`), the vision demo (`vision.demo.run_vision_demo`, or
# `vision.seeds.run_vision_seeds` over several seeds).
EXPERIMENTS = ("language", "smollm2", "vision")


@dataclasses.dataclass(frozen=True)
class DemoPreset:
    """A named demo: `config()` builds its config; `experiment` is one of `EXPERIMENTS`."""

    name: str
    experiment: str
    config: Callable[[], Any]
    description: str  # one line

    def __post_init__(self):
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"`experiment` must be one of {EXPERIMENTS}, got {self.experiment!r}.")
        if "\n" in self.description or not self.description:
            raise ValueError(f"Demo preset {self.name!r}: `description` must be one line.")

    @property
    def multi_seed(self) -> bool:
        """Whether `kfac-mem demo --seeds` repeats it over seeds (not SmolLM2: 35 CPU minutes a
        run)."""
        return self.experiment != "smollm2"


DEMO_PRESETS: dict[str, DemoPreset] = {
    p.name: p
    for p in (
        DemoPreset(
            "default",
            "language",
            DemoConfig.default,
            "every stage on the committed 4.5M-parameter OLMo-2 (~3 min on 2 CPU cores)",
        ),
        DemoPreset(
            "tiny",
            "language",
            DemoConfig.tiny,
            "every stage of the LM demo at toy size (the CI check)",
        ),
        DemoPreset(
            "smollm2",
            "smollm2",
            SmolDemoConfig.smollm2,
            "the real SmolLM2-135M-Instruct, fine-tuned to memorize passages (~35 min, 2 CPUs)",
        ),
        DemoPreset(
            "vit-digits",
            "vision",
            VisionDemoConfig.vit_digits,
            "the paper's Table 2: a ViT memorizing 10% noisy labels of scikit-learn digits (~80 s)",
        ),
        DemoPreset(
            "vit-fashion-mnist",
            "vision",
            VisionDemoConfig.vit_fashion_mnist,
            "the same on 5k Fashion-MNIST images (needs the dataset-fashion-mnist package)",
        ),
        DemoPreset(
            "vit-tiny",
            "vision",
            VisionDemoConfig.vit_tiny,
            "the vision experiment at CI size (2-layer ViT, 400 digits)",
        ),
    )
}


def demo_preset(name: str) -> DemoPreset:
    """The registered preset `name` (the error lists them)."""
    if name not in DEMO_PRESETS:
        raise ValueError(f"Unknown demo preset {name!r}; available: {sorted(DEMO_PRESETS)}.")
    return DEMO_PRESETS[name]


def demo_config(name: str) -> Any:
    """A new config of demo preset `name`."""
    return demo_preset(name).config()


def describe_presets() -> str:
    """One line per preset: name and description (`kfac-mem demo --help`)."""
    width = max(map(len, DEMO_PRESETS))
    return "\n".join(f"  {p.name:<{width}}  {p.description}" for p in DEMO_PRESETS.values())
