"""An image folder's files decoded at each access: JPEGs through torchvision, the rest through Pillow."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from launcher.data.decode import read_image
from launcher.data.images import FolderImages


def test_folder_jpegs_decode_to_pillows_pixels_in_the_crops_fast_layout(tmp_path):
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((160, 120))
    files = []
    for name, image, fmt in (("colour.jpg", smooth, "JPEG"), ("grey.JPEG", smooth.convert("L"), "JPEG"),
                             ("cmyk.jpg", smooth.convert("CMYK"), "JPEG"), ("plain.png", smooth, "PNG"),
                             ("misnamed.jpg", smooth, "PNG")):  # a PNG behind a .jpg name
        image.save(tmp_path / name, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        files.append((tmp_path / name, len(files)))
    folder = FolderImages(files)
    for index, (path, label) in enumerate(files):
        image, got_label = folder[index]
        assert got_label == label and image.shape == (3, 120, 160), path.name
        assert torch.equal(image, read_image(path)), path.name  # Pillow's pixels, grey and CMYK included
    colour, _ = folder[0]
    assert colour.unsqueeze(0).is_contiguous(memory_format=torch.channels_last)  # torchvision's decode
