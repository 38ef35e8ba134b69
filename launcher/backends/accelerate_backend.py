"""Accelerate: DDP (and FSDP full shard) with the trainer owning accumulation and the LR.

We do not use Accelerate's `accumulate()` or its wrapped scheduler: its scheduler steps once per
process, and its accumulation divides the loss by the step count, while our loss is already
normalised by the target count of the whole global batch.
"""

from __future__ import annotations

import contextlib
import os

import torch

from launcher.backends.optim import build_optimizer, set_lr
from launcher.backends.precision import resolve_precision

_MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


class AccelerateBackend:
    name = "accelerate"

    def __init__(self, recipe, math, dist_env) -> None:
        from accelerate import Accelerator

        self.recipe = recipe
        self.precision = resolve_precision(recipe.precision)
        plugin = None
        if recipe.backend.strategy == "fsdp":
            from accelerate.utils import FullyShardedDataParallelPlugin

            plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True,
                                                    state_dict_type="FULL_STATE_DICT")
        self.accelerator = Accelerator(mixed_precision=_MIXED[self.precision], cpu=not torch.cuda.is_available(),
                                       fsdp_plugin=plugin,
                                       dynamo_backend="inductor" if recipe.train.compile else "no")
        self.device = self.accelerator.device
        self.model = None
        self.optimizer = None
        self.last_step_skipped = False  # train.on_nonfinite=skip: the last step's update was skipped
        self.input_dtype = None  # autocast takes fp32 inputs

    def prepare(self, model, groups) -> None:
        optimizer = build_optimizer(groups, self.recipe.optimizer, fused=self.device.type == "cuda")
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # Accelerate prepares the model (DDP, FSDP, devices, autocast). Per step, without fp16's loss
        # scaler and outside FSDP, its backward, clipping and optimizer wrappers only add host time
        # (checks, a division by 1, a search for optional packages on disk: 0.3 ms a step on a CPU),
        # so the step calls torch itself, with the same results.
        self._torch_step = self.accelerator.scaler is None and self.recipe.backend.strategy != "fsdp"
        self._step_optimizer = self.optimizer.optimizer if self._torch_step else self.optimizer

    def autocast(self):
        # fp32 needs no autocast; Accelerate's context would be built (and the environment read) for
        # nothing at every micro-step.
        return contextlib.nullcontext() if self.precision == "fp32" else self.accelerator.autocast()

    def backward(self, loss, last: bool) -> None:
        # no_sync skips DDP's all-reduce on the micro-steps before the last one.
        context = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
        with context:
            if self._torch_step:
                loss.backward()
            else:
                self.accelerator.backward(loss)

    def scheduled_lr(self) -> float | None:
        return None  # the trainer's schedule sets every LR

    def step(self, lr: float, step: int = 0):
        set_lr(self.optimizer, lr, step)
        clip = self.recipe.optimizer.grad_clip
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if clip > 0 and self._torch_step:
            norm = torch.nn.utils.clip_grad_norm_(parameters, clip)
        elif clip > 0:
            norm = self.accelerator.clip_grad_norm_(parameters, clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in parameters]))
        # skip reads the norm before the update: a host sync per step, the price of that policy.
        self.last_step_skipped = self.recipe.train.on_nonfinite == "skip" and not bool(torch.isfinite(norm))
        if not self.last_step_skipped:
            self._step_optimizer.step()
        self._step_optimizer.zero_grad(set_to_none=True)
        return norm

    def unwrapped(self):
        """The model inside DDP (under FSDP 2 the model is its own wrapper). Not through
        Accelerator.unwrap_model unless compiled: with DeepSpeed installed it imports DeepSpeed in
        every rank to test for an engine this backend never builds (1-2 s of CPU a rank, at the
        first save or export)."""
        from accelerate.utils import is_compiled_module

        if is_compiled_module(self.model):
            return self.accelerator.unwrap_model(self.model)
        model = self.model
        while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        return model

    def save(self, files) -> None:
        """model.pt and optimizer.pt, written by global rank 0. DDP replicas are identical; under FSDP
        every rank takes part in gathering the full state, which is the same file whatever the world
        size that wrote it (a resume on another number of ranks shards it anew)."""
        model_state, optimizer_state = self._full_state()
        if self.accelerator.is_main_process:
            files.save(model_state, "model.pt")
            files.save(optimizer_state, "optimizer.pt")

    def load(self, directory: str) -> None:
        if not os.path.exists(os.path.join(directory, "model.pt")):
            self.accelerator.load_state(directory)  # FSDP, as earlier launchers wrote it (Accelerate's layout)
            return
        # mmap: the file's pages, not a copy per rank; each rank keeps only its shard of them (FSDP).
        model_state = torch.load(os.path.join(directory, "model.pt"), map_location="cpu", weights_only=True, mmap=True)
        optimizer_state = torch.load(os.path.join(directory, "optimizer.pt"), map_location="cpu", weights_only=True,
                                     mmap=True)
        if self.recipe.backend.strategy != "fsdp":
            self.unwrapped().load_state_dict(model_state)
            self.optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, model_state, options=options)
        set_optimizer_state_dict(self.model, self.optimizer.optimizer, optimizer_state, options=options)

    def sharded_by_rank(self, directory: str) -> bool:
        return False  # model.pt and optimizer.pt hold the whole state: any world size loads them

    def _full_state(self) -> tuple[dict, dict]:
        """The model's and optimizer's whole state (collective under FSDP; on the CPU)."""
        if self.recipe.backend.strategy != "fsdp":
            return self.unwrapped().state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(self.model, options=options),
                get_optimizer_state_dict(self.model, self.optimizer.optimizer, options=options))

    def export_state_dict(self):
        state = self.accelerator.get_state_dict(self.model)
        return state if self.accelerator.is_main_process else None
