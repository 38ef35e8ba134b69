"""Bytes of tensor storage alive in this process, and their peak, counted as ops allocate them.

One counter serves both sides of the memory estimate: on the meta device it traces a forward and
backward without weights or data (launcher/runtime/memory_probe.py), and on real tensors it
measures what a training step actually holds (LAUNCHER_MEMORY_TRACE, for the estimate's
benchmark). A TorchDispatchMode sees every aten op: an output whose storage is not one of the op's
inputs' is a new allocation (views and in-place ops share their input's storage, so a view of a
dataset tensor never counts the whole dataset). A storage is counted once, until it is freed.
Tensors that existed before the count began are counted only when registered (`hold`).

Engines that shard parameters (FSDP, ZeRO-3) resize storages in place (`storage.resize_`, which
no op reports): with `rescan`, the live bytes are summed again from every counted storage after
each op, which follows those resizes exactly and costs a loop over the live storages per op (the
benchmark's price, never a training run's).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    def __init__(self, rescan: bool = False) -> None:
        super().__init__()
        self.rescan = rescan
        self._storages: dict[int, weakref.ref] = {}
        self.live = 0
        self.peak = 0
        self.grads = 0  # bytes of parameter gradients written so far (see watch_grads)
        self.peak_beside_grads = 0  # the peak of live - grads: what activations add to the rest
        self._counted: set[int] = set()
        self._grad_storages: set[int] = set()

    def hold(self, tensor: torch.Tensor) -> None:
        """Count a tensor made before the count began (a parameter, a buffer)."""
        for plain in _plain_tensors([tensor]):
            self._count(plain.untyped_storage())

    def watch_grads(self, parameters) -> list:
        """Tell parameter gradients apart from activations: each .grad, once accumulated. Returns
        the hooks' handles (remove them when the count is done)."""
        return [parameter.register_post_accumulate_grad_hook(self._grad_ready)
                for parameter in parameters if parameter.requires_grad]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in _plain_tensors(tree_flatten((args, kwargs))[0])}
        for tensor in _plain_tensors(tree_flatten(out)[0]):
            if tensor.untyped_storage()._cdata not in inputs:
                self._count(tensor.untyped_storage())
        if self.rescan:
            self._sum_again()
        return out

    def _sum_again(self) -> None:
        live = 0
        for ref in list(self._storages.values()):  # a collection may free a storage meanwhile
            storage = ref()
            live += storage.nbytes() if storage is not None else 0
        self.live = live
        self.peak = max(self.peak, live)
        self.peak_beside_grads = max(self.peak_beside_grads, live - self.grads)

    def _count(self, storage) -> None:
        key = storage._cdata
        if key in self._counted:
            return
        size = storage.nbytes()
        self._counted.add(key)
        if self.rescan:  # summed after the op, from every storage's size now
            self._storages[key] = weakref.ref(storage)
            weakref.finalize(storage, self._freed, key, 0)
            return
        self.live += size
        self.peak = max(self.peak, self.live)
        self.peak_beside_grads = max(self.peak_beside_grads, self.live - self.grads)
        weakref.finalize(storage, self._freed, key, size)

    def _freed(self, key: int, size: int) -> None:
        self._counted.discard(key)
        self._storages.pop(key, None)
        self.live -= size
        if key in self._grad_storages:
            self._grad_storages.discard(key)
            self.grads -= size

    def _grad_ready(self, parameter) -> None:
        grad = next(_plain_tensors([parameter.grad]), None)
        if grad is None:
            return
        storage = grad.untyped_storage()
        if storage._cdata not in self._grad_storages and storage._cdata in self._counted:
            self._grad_storages.add(storage._cdata)
            self.grads += storage.nbytes()


def _plain_tensors(values):
    """The tensors that own storage: a wrapper subclass (FSDP2's DTensor) has none of its own, its
    inner (local) tensors do."""
    for value in values:
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            continue
        flatten = getattr(value, "__tensor_flatten__", None)
        if flatten is None:
            yield value
        else:
            yield from _plain_tensors(getattr(value, name) for name in flatten()[0])


TRACE_ENV = "LAUNCHER_MEMORY_TRACE"  # a directory: each rank writes rank-N.json there (the benchmark's)
_active: LiveBytes | None = None
_peak_at_steps = 0


def trace_training(model, rank: int):
    """The count around prepare and the training steps, when LAUNCHER_MEMORY_TRACE names a
    directory; a no-op context otherwise. The peak is the one reached by the end of the last
    training step (step_done), not by the final save or export."""
    import contextlib
    import json
    import os

    directory = os.environ.get(TRACE_ENV)
    if not directory:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def traced():
        global _active
        counter = LiveBytes(rescan=True)
        for tensor in (*model.parameters(), *model.buffers()):
            counter.hold(tensor)
        counter.peak = 0
        counter._sum_again()
        start = counter.live
        _active = counter
        try:
            with counter:
                yield
        finally:
            _active = None
        record = {"rank": rank, "peak_bytes": _peak_at_steps, "model_bytes_at_start": start}
        with open(os.path.join(directory, f"rank-{rank}.json"), "w", encoding="utf-8") as handle:
            json.dump(record, handle)

    return traced()


def step_done() -> None:
    """After each training step: the peak so far is the training steps' peak."""
    global _peak_at_steps
    if _active is not None:
        _peak_at_steps = _active.peak
