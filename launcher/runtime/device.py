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


def to_device(batch, device):
    if device.type == "cpu":
        return batch  # the loader's tensors are on the host already
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
