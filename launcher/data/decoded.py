"""Decode an image folder once: a uint8 N x S x S x 3 memory map that the loader reads per sample.

Decoding JPEGs is most of the per-image cost of a ResNet input pipeline (a few ms each on one
core), far more than the crop and resize that follow, so a fast GPU starves on the host's cores.
With `data.decoded_cache: S` every image is decoded once (in parallel, by one process per node),
its short side resized to S and its centre square kept; each epoch then only reads S x S x 3 bytes
and crops. The JPEG decoder's own downscaling (Pillow's draft mode) keeps the one-off build fast.
The cache sits next to the other preprocessing caches, keyed by the files (path, size, mtime) and
S, and is committed with one rename, so a kill mid-build leaves nothing a later run trusts.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from launcher.data.cache import files_key

FORMAT_VERSION = 2  # 2: size x size x 3, the layout the crops read fastest (launcher.data.crops)


def cache_key(files: list[tuple[Path, int]], size: int) -> str:
    return files_key({"size": size, "format": FORMAT_VERSION}, files)


def decode_square(path: str | Path, size: int) -> np.ndarray:
    """One file -> uint8 size x size x 3: short side resized to `size`, centre square kept."""
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4, 1/8 scale when still >= size
        image = image.convert("RGB")
        width, height = image.size
        scale = size / min(width, height)
        resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                               Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        square = resized.crop((left, top, left + size, top + size))
    return np.array(square, dtype=np.uint8)


def _decode_range(args: tuple[str, list[str], int, int, int]) -> int:
    target, paths, start, total, size = args
    images = np.memmap(target, dtype=np.uint8, mode="r+", shape=(total, size, size, 3))
    for offset, path in enumerate(paths):
        images[start + offset] = decode_square(path, size)
    images.flush()
    return len(paths)


def write_decoded(files: list[tuple[Path, int]], size: int, directory: Path, workers: int = 0) -> dict:
    """Decode every file into directory/images.u8 (+ labels.npy); returns a summary."""
    total = len(files)
    target = directory / "images.u8"
    np.memmap(target, dtype=np.uint8, mode="w+", shape=(total, size, size, 3)).flush()
    np.save(directory / "labels.npy", np.array([label for _, label in files], dtype=np.int64))
    paths = [str(path) for path, _ in files]
    workers = workers or max(1, min(32, os.cpu_count() or 1))
    chunk = max(1, -(-total // (workers * 4)))
    jobs = [(str(target), paths[i:i + chunk], i, total, size) for i in range(0, total, chunk)]
    if workers == 1 or len(jobs) == 1:
        done = sum(map(_decode_range, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            done = sum(pool.map(_decode_range, jobs))
    return {"images": done, "size": size}


class DecodedImages:
    """(uint8 3 x S x S tensor over S x S x 3 bytes, label) from a decoded cache. The memory map is
    opened lazily in each process, so DataLoader workers share the page cache instead of pickling it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        summary = json.loads((directory / "done").read_text())
        self.size = int(summary["size"])
        self.labels = np.load(directory / "labels.npy")
        self._images: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        import torch

        if self._images is None:
            self._images = np.memmap(self.directory / "images.u8", dtype=np.uint8, mode="r",
                                     shape=(len(self.labels), self.size, self.size, 3))
        return torch.from_numpy(np.array(self._images[index])).permute(2, 0, 1), int(self.labels[index])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}
