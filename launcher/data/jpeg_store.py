"""Re-encode an image folder once into a compact JPEG store: short side S, one packed file.

ImageNet's originals average ~110 KB and ~400 x 350 px; decoding them is most of a ResNet input
pipeline's cost. Decoding them once into raw pixels (launcher.data.decoded) is fastest but costs
3 x S x S bytes per image (196 KB at 256 px: 252 GB for ImageNet-1k, more than a GPU node's disk or
memory). This store keeps the whole picture, resized so that its short side is S (never enlarged),
re-encoded as JPEG (quality 90 by default): about 20-40 KB per image at S = 256, and each access
decodes a small JPEG instead of a large one. The trainer's random crops are then taken from it,
keyed to the sample's stream position as before, so resume stays exact (decoding is deterministic).

Layout: images.bin (every JPEG, back to back), offsets.npy (int64, N + 1 boundaries), shapes.npy
(height and width of each, for crop boxes drawn without decoding), labels.npy.
Built in parallel (one process per core), keyed by the files (path, size, mtime), S and the
quality, and committed with one rename by launcher.data.cache.build_once.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from launcher.data.cache import files_key
from launcher.data.decode import decode_with_torchvision, read_image

FORMAT_VERSION = 2  # 2: shapes.npy


def cache_key(files: list[tuple[Path, int]], short_side: int, quality: int) -> str:
    return files_key({"kind": "jpeg", "short_side": short_side, "quality": quality, "format": FORMAT_VERSION}, files)


def reencode(path: str | Path, short_side: int, quality: int) -> tuple[bytes, int, int]:
    """One file -> (JPEG bytes of the RGB picture with its short side at most `short_side`, its
    height, its width)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (short_side, short_side))  # JPEG: decode at 1/2..1/8 scale when still large enough
            image = image.convert("RGB")
            return _resized_jpeg(image, short_side, quality)
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for a file that is no (whole) image
        raise ImageFileError(f"{path}: cannot be read as an image ({error})\n      HINT: remove or replace "
                             "the file, then run again") from None


class ImageFileError(ValueError):
    """An input image that cannot be decoded, named."""


def _resized_jpeg(image, short_side: int, quality: int) -> tuple[bytes, int, int]:
    from PIL import Image

    width, height = image.size
    scale = short_side / min(width, height)
    if scale < 1:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                             Image.Resampling.BILINEAR, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue(), image.height, image.width


def _reencode_chunk(args: tuple[list[str], int, int]) -> list[tuple[bytes, int, int]]:
    paths, short_side, quality = args
    return [reencode(path, short_side, quality) for path in paths]


def write_jpeg_store(files: list[tuple[Path, int]], short_side: int, quality: int, directory: Path,
                     workers: int = 0) -> dict:
    """Re-encode every file into directory (images.bin, offsets.npy, labels.npy); returns a summary."""
    paths = [str(path) for path, _ in files]
    workers = workers or max(1, min(32, os.cpu_count() or 1))
    chunk = max(1, min(256, -(-len(paths) // (workers * 4))))
    jobs = [(paths[i:i + chunk], short_side, quality) for i in range(0, len(paths), chunk)]
    offsets, shapes = [0], []
    with open(directory / "images.bin", "wb") as handle:
        if workers == 1 or len(jobs) == 1:
            results = map(_reencode_chunk, jobs)
            pool = None
        else:
            pool = ProcessPoolExecutor(workers)
            results = pool.map(_reencode_chunk, jobs)  # in order: image i stays image i
        try:
            for encoded in results:
                for data, height, width in encoded:
                    handle.write(data)
                    offsets.append(offsets[-1] + len(data))
                    shapes.append((height, width))
        finally:
            if pool is not None:
                pool.shutdown()
        handle.flush()
        os.fsync(handle.fileno())
    np.save(directory / "offsets.npy", np.array(offsets, dtype=np.int64))
    np.save(directory / "shapes.npy", np.array(shapes, dtype=np.int32).reshape(-1, 2))
    np.save(directory / "labels.npy", np.array([label for _, label in files], dtype=np.int64))
    source_bytes = sum(path.stat().st_size for path, _ in files)
    return {"images": len(files), "short_side": short_side, "quality": quality, "bytes": offsets[-1],
            "bytes_per_image": offsets[-1] / max(1, len(files)), "source_bytes": source_bytes}


class JpegStore:
    """(uint8 3 x H x W tensor, label) from a JPEG store. The packed file is memory-mapped lazily in
    each process, so DataLoader workers share the page cache instead of pickling it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.summary = json.loads((directory / "done").read_text())
        self.offsets = np.load(directory / "offsets.npy")
        self.labels = np.load(directory / "labels.npy")
        self.shapes = np.load(directory / "shapes.npy")
        self._data: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def encoded(self, index: int) -> memoryview:
        if self._data is None:
            self._data = np.memmap(self.directory / "images.bin", dtype=np.uint8, mode="r")
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return memoryview(self._data[start:end])

    def encoded_tensor(self, index: int):
        """The JPEG bytes as a uint8 1-D tensor (a copy: it outlives the map in a worker's batch)."""
        import torch

        return torch.frombuffer(bytearray(self.encoded(index)), dtype=torch.uint8)

    def __getitem__(self, index: int):
        image = decode_with_torchvision(self.encoded(index))
        if image is None:  # Pillow, the original files' fallback too
            image = read_image(io.BytesIO(self.encoded(index)))
        return image, int(self.labels[index])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}
