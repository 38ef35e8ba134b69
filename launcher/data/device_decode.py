"""JPEG decoding on the training device (`data.decode: device`): nvJPEG on CUDA, batched.

The loader then does almost nothing per image: it slices the JPEG store's bytes and draws the crop
box and flip from the same position-keyed RNG as host decoding (launcher.recipes.resnet_transfer
.Augmented), so the crops are the same ones and resume stays exact. The device decodes the whole
micro-batch in one call (torchvision.io.decode_jpeg with a list and device="cuda") and crops and
resizes each picture there. On a CPU device the same call decodes with libjpeg-turbo, which is how
the path is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.data.decode import torchvision_decoder


@dataclass(frozen=True)
class EncodedImages:
    """A micro-batch of JPEG bytes (uint8 CPU tensors) and what to do with each picture.

    Not a tensor, list or dict, so launcher.runtime.device.to_device and the DataLoader's pinning
    leave it on the host: nvJPEG reads its input from host memory."""

    data: tuple  # uint8 1-D CPU tensors, one JPEG each
    boxes: tuple[tuple[int, int, int, int], ...] | None  # (top, left, height, width) per image; None: eval
    flips: tuple[bool, ...]
    size: int
    eval_resize: float


def decode_crops(encoded: EncodedImages, device):
    """uint8 N x 3 x size x size on `device`: decoded in one batched call, then cropped and resized."""
    import torch
    import torchvision.transforms.v2.functional as F

    decoder = torchvision_decoder()
    if decoder is None:
        raise RuntimeError("data.decode: device needs torchvision.io.decode_jpeg, which this torchvision lacks; "
                           "use data.decode: host")
    decode_jpeg, rgb = decoder
    if device.type == "cuda":
        images = _decode_on_own_stream(decode_jpeg, list(encoded.data), rgb, device)
    else:
        images = decode_jpeg(list(encoded.data), mode=rgb, device=device)
    size = encoded.size
    crops = []
    for index, image in enumerate(images):
        if encoded.boxes is None:
            crop = F.center_crop(F.resize(image, [round(size * encoded.eval_resize)], antialias=True), [size, size])
        else:
            top, left, height, width = encoded.boxes[index]
            crop = F.resized_crop(image, top, left, height, width, [size, size], antialias=True)
            if encoded.flips[index]:
                crop = F.horizontal_flip(crop)
        crops.append(crop)
    return torch.stack(crops)


def _decode_on_own_stream(decode_jpeg, data: list, mode, device) -> list:
    """nvJPEG's output is allocated on the current stream but written from a private one that does
    not wait for it, so a block the caching allocator recycles while queued kernels still read it
    can be overwritten (pytorch/vision PR 9606). Allocating on a stream of our own, which waits for
    the training stream, keeps recycled blocks out of the decoder's way; the training stream then
    waits for the decode. All of this is ordering on the device, none of it a host sync."""
    import torch

    training = torch.cuda.current_stream(device)
    side = _side_stream(device)
    side.wait_stream(training)
    with torch.cuda.stream(side):
        images = decode_jpeg(data, mode=mode, device=device)
    training.wait_stream(side)
    for image in images:
        image.record_stream(training)  # freed later, reused only after the training stream's use
    return images


_SIDE_STREAMS: dict = {}


def _side_stream(device):
    import torch

    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]
