"""`kfac-mem demo --preset vit-digits|vit-fashion-mnist`: the paper's Table 2 on local images.

Modules: `config` (`VisionDemoConfig` and its presets, registered in
`kfac_mem.demo.presets.DEMO_PRESETS`), `split` (images, noisy labels, fit /
selection split), `measure` (the Table-2 measures), `run` (`run_vision_demo`, the driver), `report`
(summary.json, report.md).

Stages (every one through the shared pipeline; the ViT is a plugin of the curvature protocol):

  data      load the images (no download), replace a fixed, seeded 10% of the training labels
  train     AdamW on the noisy labels until the model memorizes most of them (Orbax checkpoint
            under OUT/model, reused unless `retrain`)
  split     the training images are split, seeded, into a *fit* part and a *selection* part
  collect   `kfac_mem.collection` on the fit part's images: K-FAC factors of the MLP matrices (fc1, fc2)
            at the CLS position only (the model's `loss_targets` weights), sampled labels
  decompose `kfac_mem.decomposition.decompose_run`
  sweep     layer sets {first, last, first+last} × fc1+fc2 × ρ, each edit by `apply_plan`; the
            setting is chosen on the *selection* part of the training images only: lowest share
            of noisy labels still memorized there, among settings whose accuracy on the clean
            selection images stays within `clean_tolerance` of the unedited model's. Validation
            images are never looked at before the choice is made.
  control   SVD truncation of the same matrices, the drop fraction matched to the K-FAC edit's
            noisy-label memorization on the selection part (the paper's Table 2 compares SVD and
            K-FAC at equal memorization, 3.5% each)
  report    the Table-2 layout (noisy labels memorized, true labels recovered on those images,
            validation accuracy: before / K-FAC / SVD), OUT/summary.json, OUT/report.md

Why sampled labels: the Fisher with labels drawn from the model's own softmax (the paper's default)
is a property of the model, not of the noisy targets; with empirical (noisy) labels the memorized
images' large-loss gradients would themselves enter G. `factor_mode` switches it.
"""

from kfac_mem.vision.demo.config import VisionDemoConfig as VisionDemoConfig
from kfac_mem.vision.demo.measure import TABLE2_MEASURES as TABLE2_MEASURES
from kfac_mem.vision.demo.measure import measure as measure
from kfac_mem.vision.demo.report import PAPER_TABLE2 as PAPER_TABLE2
from kfac_mem.vision.demo.run import run_vision_demo as run_vision_demo
from kfac_mem.vision.demo.split import split_fit_selection as split_fit_selection

__all__ = [
    "PAPER_TABLE2",
    "TABLE2_MEASURES",
    "VisionDemoConfig",
    "measure",
    "run_vision_demo",
    "split_fit_selection",
]
