"""`precision: auto` means bf16 on a GPU that supports it, fp32 on CPU."""

from __future__ import annotations


def resolve_precision(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"
