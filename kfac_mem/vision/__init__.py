"""Vision: the paper's ViT label-noise experiment (Table 2) on local image data.

`data` loads images without downloading, `noise` replaces a fixed fraction of training labels,
`train` trains a `models.vision_model.VisionModel` sharded over the mesh, `metrics` measures the
Table-2 layout (noisy labels memorized, true labels recovered, validation accuracy).
"""

from kfac_mem.vision.data import ImageDataset as ImageDataset
from kfac_mem.vision.data import load_image_dataset as load_image_dataset
from kfac_mem.vision.metrics import evaluate_noisy_training as evaluate_noisy_training
from kfac_mem.vision.metrics import noise_report as noise_report
from kfac_mem.vision.metrics import predict as predict
from kfac_mem.vision.noise import inject_label_noise as inject_label_noise
from kfac_mem.vision.train import DIGITS_NOISY_RECIPE as DIGITS_NOISY_RECIPE
from kfac_mem.vision.train import TrainConfig as TrainConfig
from kfac_mem.vision.train import train_classifier as train_classifier

__all__ = [
    "DIGITS_NOISY_RECIPE",
    "ImageDataset",
    "TrainConfig",
    "evaluate_noisy_training",
    "inject_label_noise",
    "load_image_dataset",
    "noise_report",
    "predict",
    "train_classifier",
]
