"""Moving batches and host numbers to the device without a host sync."""

from __future__ import annotations

import torch


def on_device(value: float, device):
    """A host number as a float64 device tensor without a stream sync: a plain torch.tensor(...,
    device="cuda") copies from pageable memory and waits for the GPU, every step."""
    host = torch.tensor(value, dtype=torch.float64)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def to_device(batch, device, float_dtype=None):
    """The batch on the device; float_dtype: floating tensors cast to it (an engine that casts the
    model's weights to bf16/fp16, DeepSpeed's, takes inputs of that type)."""
    if device.type == "cpu" and float_dtype is None:
        return batch  # the loader's tensors are on the host already
    if isinstance(batch, torch.Tensor):
        if float_dtype is not None and batch.is_floating_point():
            return batch.to(device, float_dtype, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device, float_dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, float_dtype) for v in batch)
    return batch
