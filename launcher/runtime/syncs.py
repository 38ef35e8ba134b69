"""Counting the calls that would make the host wait for a GPU, on any device (the CPU included).

A GPU runs ahead of the Python thread that feeds it until the host needs a value: `.item()`,
`.tolist()`, a tensor's truth value (`if t:`, `bool(t)`, `x in t`), or a tensor made on the device
from host data (`torch.tensor(n, device=...)` copies from pageable memory and waits). Each one in
the training step costs a full pipeline drain per micro-step. This module counts them, each with
the file and line outside torch that made it, so the CPU benchmark and the tests can show a step
adds none (on a CPU the calls are cheap, but they are the same calls).

On a GPU only tensors on the GPU count. On a CPU every tensor is on the host, so the reads of
tensors that stay on the host on a GPU too are left out by where they are made: torch's
optimizers' step counters (CPU tensors unless fused or capturable) and the launcher's stop flag
(a CPU tensor on a gloo group, launcher/runtime/stopping.py).
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections import Counter
from pathlib import Path

_TORCH = str(Path(__import__("torch").__file__).parent)
_HOST_SIDE = (str(Path(_TORCH) / "optim") + "/", str(Path(__file__).parent / "stopping.py"))


@contextlib.contextmanager
def count_syncs(device_type: str = "cpu"):
    """Yields a Counter {"file:line what": n} of the sync points hit while the block runs, for a
    run on `device_type` (cuda: reads of GPU tensors; cpu: every read but the host-side ones)."""
    import torch

    found: Counter = Counter()

    def where(what: str, tensor=None) -> None:
        if tensor is not None and device_type != "cpu":
            if tensor.device.type == "cpu":
                return  # a host tensor: reading it waits for nothing
        elif tensor is not None and sys._getframe(2).f_code.co_filename.startswith(_HOST_SIDE):
            return
        for frame in reversed(traceback.extract_stack(sys._getframe(2), limit=25)):
            if not frame.filename.startswith(_TORCH) and "/runtime/syncs.py" not in frame.filename:
                found[f"{frame.filename}:{frame.lineno} {what}"] += 1
                return
        found[f"(torch) {what}"] += 1

    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__")}
    factories = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}

    def spy_method(name):
        original = originals[name]

        def spy(self, *args, **kwargs):
            where(f".{name}()" if name != "__bool__" else "truth value", self)
            return original(self, *args, **kwargs)

        return spy

    def spy_factory(name):
        original = factories[name]

        def spy(data, *args, **kwargs):
            if kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
                where(f"torch.{name}(host data, device=...)")
            return original(data, *args, **kwargs)

        return spy

    try:
        for name in originals:
            setattr(torch.Tensor, name, spy_method(name))
        for name in factories:
            setattr(torch, name, spy_factory(name))
        yield found
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        for name, original in factories.items():
            setattr(torch, name, original)
