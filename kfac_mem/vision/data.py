"""Image classification data from local files only (nothing downloads at run time).

Sources, all returning an `ImageDataset` of float32 images [N, H, W, C] in [0, 1] and int32 labels:
  * "digits": scikit-learn's 1,797 8×8 handwritten digits (values 0–16), split train/validation
    with a seeded permutation (the default source);
  * an idx directory (MNIST / Fashion-MNIST layout: `{train,t10k}-{images-idx3,labels-idx1}-ubyte`
    with or without `.gz`); "fashion-mnist" is Debian's `dataset-fashion-mnist` at
    `/usr/share/datasets/fashion-mnist`;
  * a `.npz` file with `images` [N, H, W(, C)] and `labels` [N] (optionally `val_images`,
    `val_labels`; otherwise a seeded split);
  * an image folder: one subfolder per class (PNG/JPEG), or `train/` + `val/` (or `test/`) folders
    each holding the class subfolders.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Sequence

import numpy as np

from models.vit_config import FASHION_MNIST_LABELS

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """Train and validation images [N, H, W, C] (float32 in [0, 1]) with int32 labels [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int
    label_names: tuple[str, ...]
    source: str

    def __post_init__(self):
        for split in ("train", "val"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(
                    f"{self.source}: {split} images must be [N, H, W, C] and labels "
                    f"[N]; got {x.shape} and {y.shape}."
                )
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"{self.source}: {split} labels must lie in [0, {self.num_classes})."
                )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def subset(
        self, n_train: int | None = None, n_val: int | None = None, seed: int = 0
    ) -> ImageDataset:
        """A seeded random subset of at most `n_train` training and `n_val` validation images."""
        rng = np.random.default_rng(seed)

        def pick(x, y, n):
            if n is None or n >= len(y):
                return x, y
            idx = np.sort(rng.permutation(len(y))[:n])
            return x[idx], y[idx]

        tx, ty = pick(self.train_images, self.train_labels, n_train)
        vx, vy = pick(self.val_images, self.val_labels, n_val)
        return dataclasses.replace(
            self, train_images=tx, train_labels=ty, val_images=vx, val_labels=vy
        )

    def describe(self) -> dict:
        return {
            "source": self.source,
            "n_train": len(self.train_labels),
            "n_val": len(self.val_labels),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
        }


def split_train_val(
    images: np.ndarray,
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    num_classes: int,
    label_names: Sequence[str],
    source: str,
) -> ImageDataset:
    """Seeded split: `round(val_fraction · N)` random images become the validation set."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}.")
    perm = np.random.default_rng(seed).permutation(len(labels))
    n_val = int(np.floor(val_fraction * len(labels) + 0.5))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return ImageDataset(
        images[train],
        labels[train],
        images[val],
        labels[val],
        num_classes,
        tuple(label_names),
        source,
    )


def _as_unit_float(images: np.ndarray, origin: str) -> np.ndarray:
    """uint8/int images -> [0, 1] by the dtype's max; float images are checked to lie in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{origin}: images must be [N, H, W] or [N, H, W, C], got {images.shape}.")
    if np.issubdtype(images.dtype, np.integer):
        return (images.astype(np.float32) / float(np.iinfo(images.dtype).max)).astype(np.float32)
    images = images.astype(np.float32)
    if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
        raise ValueError(f"{origin}: float images must lie in [0, 1] (scale them, or store uint8).")
    return images


def load_digits(val_fraction: float = 0.25, seed: int = 0) -> ImageDataset:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes), values 0–16 scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError(
            "The digits data ships with scikit-learn: `pip install scikit-learn` "
            "(it is in kfac-mem's `dev` extra)."
        ) from None
    bunch = sk_load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[..., None]
    labels = bunch.target.astype(np.int32)
    return split_train_val(
        images, labels, val_fraction, seed, 10, [str(i) for i in range(10)], "sklearn:digits"
    )


def read_idx(path: str) -> np.ndarray:
    """One idx file (MNIST format, optionally gzipped) -> uint8 array of its stated shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (bad magic {raw[:4]!r}).")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values.")
    return data.reshape(shape)


def _idx_file(directory: str, stem: str) -> str:
    for name in (f"{stem}.gz", stem):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise FileNotFoundError(
        f"{directory}: no `{stem}` (or `{stem}.gz`); an idx directory needs "
        f"train-/t10k- images-idx3-ubyte and labels-idx1-ubyte files."
    )


def load_idx(
    directory: str = FASHION_MNIST_DIR, label_names: Sequence[str] | None = None
) -> ImageDataset:
    """MNIST-format idx files: `train-*` is the training set, `t10k-*` the validation set."""
    if not os.path.isdir(directory):
        hint = (
            " Install Debian's package with `sudo apt-get install dataset-fashion-mnist`."
            if os.path.abspath(directory) == FASHION_MNIST_DIR
            else ""
        )
        raise FileNotFoundError(f"{directory}: no such idx directory.{hint}")
    parts = {}
    for split in ("train", "t10k"):
        images = read_idx(_idx_file(directory, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(directory, f"{split}-labels-idx1-ubyte")).astype(np.int32)
        if len(images) != len(labels):
            raise ValueError(
                f"{directory}: {split} has {len(images)} images but {len(labels)} labels."
            )
        parts[split] = (_as_unit_float(images, directory), labels)
    num_classes = int(max(parts["train"][1].max(), parts["t10k"][1].max())) + 1
    if label_names is None:
        fashion = os.path.abspath(directory) == FASHION_MNIST_DIR and num_classes == 10
        label_names = FASHION_MNIST_LABELS if fashion else [str(i) for i in range(num_classes)]
    return ImageDataset(
        *parts["train"],
        *parts["t10k"],
        num_classes,
        tuple(label_names),
        f"idx:{os.path.abspath(directory)}",
    )


def load_npz(path: str, val_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """`.npz` with `images`, `labels` (and optionally `val_images`, `val_labels`, `label_names`)."""
    with np.load(path, allow_pickle=False) as z:
        missing = {"images", "labels"} - set(z.files)
        if missing:
            raise ValueError(
                f"{path}: missing arrays {sorted(missing)}; an image .npz needs `images` "
                f"[N, H, W(, C)] and `labels` [N] (found {z.files})."
            )
        arrays = {k: z[k] for k in z.files}
    images = _as_unit_float(arrays["images"], path)
    labels = arrays["labels"].astype(np.int32)
    val = None
    if "val_images" in arrays:
        val = (_as_unit_float(arrays["val_images"], path), arrays["val_labels"].astype(np.int32))
    top = max(labels.max(), -1 if val is None else val[1].max())
    num_classes = int(top) + 1
    names = (
        [str(n) for n in arrays["label_names"]]
        if "label_names" in arrays
        else [str(i) for i in range(num_classes)]
    )
    num_classes = max(num_classes, len(names))
    if val is None:
        return split_train_val(
            images, labels, val_fraction, seed, num_classes, names, f"npz:{path}"
        )
    return ImageDataset(images, labels, *val, num_classes, tuple(names), f"npz:{path}")


def _read_image(path: str, channels: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
        return (
            arr.astype(np.float32)[..., None] / 255.0
            if channels == 1
            else arr.astype(np.float32) / 255.0
        )
    if not path.lower().endswith(".png"):
        raise ImportError(f"{path}: reading non-PNG images needs Pillow (`pip install pillow`).")
    import matplotlib.image

    arr = matplotlib.image.imread(path).astype(np.float32)  # PNG: float in [0, 1]
    arr = arr[..., None] if arr.ndim == 2 else arr[..., :3]
    if channels == 1 and arr.shape[-1] == 3:
        arr = (arr @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return arr


def _read_class_folders(
    root: str, class_names: Sequence[str], channels: int
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        files = (
            sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
            if os.path.isdir(folder)
            else []
        )
        for f in files:
            arr = _read_image(os.path.join(folder, f), channels)
            if images and arr.shape != images[0].shape:
                raise ValueError(
                    f"{os.path.join(folder, f)}: shape {arr.shape} differs from the "
                    f"first image's {images[0].shape}; resize all images to one size."
                )
            images.append(arr)
            labels.append(label)
    if not images:
        raise FileNotFoundError(
            f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class "
            f"subfolders {list(class_names)}."
        )
    return np.stack(images).astype(np.float32), np.asarray(labels, np.int32)


def load_image_folder(
    root: str, val_fraction: float = 0.2, seed: int = 0, channels: int = 1
) -> ImageDataset:
    """Class-per-subfolder images (sorted folder names are the classes), read as `channels` = 1
    (grey) or 3 (RGB). With `train/` and `val/` (or `test/`) subfolders those are the splits."""
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 (grey) or 3 (RGB), got {channels}.")
    val_dir = next(
        (os.path.join(root, v) for v in ("val", "test") if os.path.isdir(os.path.join(root, v))),
        None,
    )
    train_dir = (
        os.path.join(root, "train")
        if val_dir and os.path.isdir(os.path.join(root, "train"))
        else root
    )
    classes = sorted(
        d
        for d in os.listdir(train_dir)
        if os.path.isdir(os.path.join(train_dir, d)) and not d.startswith(".")
    )
    if not classes:
        raise FileNotFoundError(
            f"{train_dir}: no class subfolders; put each class's images in "
            f"a folder named after the class."
        )
    images, labels = _read_class_folders(train_dir, classes, channels)
    source = f"folder:{os.path.abspath(root)}"
    if train_dir == root:
        return split_train_val(images, labels, val_fraction, seed, len(classes), classes, source)
    val_images, val_labels = _read_class_folders(val_dir, classes, channels)
    return ImageDataset(
        images, labels, val_images, val_labels, len(classes), tuple(classes), source
    )


def load_image_dataset(
    spec: str = "digits", val_fraction: float = 0.25, seed: int = 0
) -> ImageDataset:
    """ "digits" | "fashion-mnist" | a `.npz` file | an idx directory | an image folder."""
    if spec == "digits":
        return load_digits(val_fraction, seed)
    if spec == "fashion-mnist":
        return load_idx(FASHION_MNIST_DIR)
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isfile(path) and path.endswith(".npz"):
        return load_npz(path, val_fraction, seed)
    if os.path.isdir(path):
        names = os.listdir(path)
        if any(n.startswith("train-images-idx3-ubyte") for n in names):
            return load_idx(path)
        return load_image_folder(path, val_fraction, seed)
    raise FileNotFoundError(
        f"`{spec}` is not an image data source: give 'digits', 'fashion-mnist', a "
        f".npz file (images, labels), an idx directory or an image folder."
    )
