"""DeepSpeed's checkpoint files read without running code: torch's weights-only unpickler, allowed
the few DeepSpeed classes those files hold (the backend's load, and the resharding's reads)."""

from __future__ import annotations

import enum
import pickle

import torch


def deepspeed_checkpoint_classes() -> list[type]:
    """What DeepSpeed pickles into its checkpoints besides tensors and containers: its loss scalers,
    the ZeRO stage enum and the fragment addresses of its parameter-slice maps."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_weights_only(path: str, map_location=None, mmap: bool = False):
    """torch.load restricted to tensors, containers and deepspeed_checkpoint_classes(); mmap: the
    file's pages are read as they are used (a zip-format file)."""
    classes = deepspeed_checkpoint_classes()
    # Python 3.11.0-3.11.3 (Debian 12's 3.11.2) pickle an enum member as getattr(EnumClass, "NAME"),
    # which weights_only refuses. The unpickler's getattr here only looks up a member of the enums
    # allowed above; any other getattr in a file still fails the load.
    enums = tuple(c for c in classes if isinstance(c, type) and issubclass(c, enum.Enum))

    def enum_member(owner, name: str):
        if owner not in enums or name not in owner.__members__:
            raise pickle.UnpicklingError(f"getattr({owner!r}, {name!r}) is not an enum member allowed in a checkpoint")
        return owner[name]

    with torch.serialization.safe_globals([*classes, (enum_member, "builtins.getattr")]):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
