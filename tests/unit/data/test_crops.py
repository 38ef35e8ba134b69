"""The loader's crops: torchvision's pixels, in the layout that makes them cheap."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from launcher.data.crops import resized_crop, stack
from launcher.recipes.resnet_transfer import _crop_box


def _decoded_jpeg(height: int, width: int, seed: int) -> torch.Tensor:
    """A JPEG decoded the way the stores decode it: H x W x 3 memory seen as 3 x H x W."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8))
    out = io.BytesIO()
    coarse.resize((width, height), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    from launcher.data.decode import torchvision_decoder

    decode_jpeg, rgb = torchvision_decoder()
    return decode_jpeg(torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8), mode=rgb)


@pytest.mark.parametrize("layout", ["decoder", "planar", "gray"])
def test_crops_equal_torchvisions_resized_crop_pixel_for_pixel(layout):
    """Every layout a store hands over: the JPEG decoders' (H x W x 3), the decoded store's
    (3 x H x W) and a grey picture expanded to 3 channels. Same boxes as RandomResizedCrop, down-
    and up-scaled, mirrored or not: the same pixels torchvision gives, so figures stay as they were."""
    rng = random.Random(3)
    for seed in range(6):
        image = _decoded_jpeg(256, 341, seed)
        if layout == "planar":
            image = image.contiguous()
        elif layout == "gray":
            image = image[:1].expand(3, -1, -1)
        for _ in range(4):
            box = _crop_box(image.shape[1], image.shape[2], 0.08, rng)
            flip = rng.random() < 0.5
            expected = F.resized_crop(image, *box, [224, 224], antialias=True)
            if flip:
                expected = F.horizontal_flip(expected)
            got = resized_crop(image, box, 224, flip)
            assert got.shape == (3, 224, 224) and torch.equal(got, expected), (layout, box, flip)
            # The fast layout: H x W x 3 in memory, so the batch copies it without transposing.
            assert got.unsqueeze(0).is_contiguous(memory_format=torch.channels_last)


def test_a_batch_of_crops_is_channels_last_with_the_same_pixels():
    crops = [resized_crop(_decoded_jpeg(96, 128, seed), (4, 8, 80, 100), 64, seed % 2 == 1) for seed in range(5)]
    crops.append(torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8))  # an eval crop in planar layout
    batch = stack(crops)
    assert batch.shape == (6, 3, 64, 64) and batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, torch.stack(crops))
