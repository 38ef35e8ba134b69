"""Image files and JPEG bytes to uint8 tensors: one decoder for the image folders and the JPEG
store (torchvision's libjpeg-turbo where it has it, Pillow for everything else)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import BinaryIO


def read_image(path: str | Path | BinaryIO):
    """A file (or file object) as a uint8 3 x H x W tensor (Pillow: torchvision 0.29 deprecates its own decoders)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


@functools.cache
def torchvision_decoder():
    """(torchvision.io.decode_jpeg, ImageReadMode.RGB), or None where torchvision no longer has it.

    torchvision 0.29 marks its decoders deprecated in favour of TorchCodec, but they are the ones
    with a batched nvJPEG path, and on the CPU they decode straight into a tensor: 0.47 ms against
    Pillow's 0.62 ms for a 256 x 341 picture here, and 0.75 against 1.1 ms with the 224 crop."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            return None

    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(*args, **kwargs)

    return quiet, ImageReadMode.RGB


def decode_with_torchvision(data: bytes | memoryview):
    """JPEG bytes -> uint8 3 x H x W over H x W x 3 memory (the layout the crops read fastest), or
    None where torchvision lacks its decoder or rejects the bytes, for Pillow to try."""
    decoder = torchvision_decoder()
    if decoder is None:
        return None
    import torch

    decode_jpeg, rgb = decoder
    try:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=rgb)
    except RuntimeError:  # e.g. a file named .jpg that is not one: Pillow knows more formats
        return None
