"""The backend protocol: the trainer owns the loop, a backend owns the engine.

Per optimizer step the trainer calls, for each of the `accumulation` micro-batches:
    loss = task.loss(backend.model, batch) ...; backend.backward(scaled_loss, last=k == accumulation - 1)
and then once:
    grad_norm = backend.step(lr, step)
The LR is set by the trainer from the closed-form schedule; the one exception is a DeepSpeed config's
own scheduler (scheduler.name=deepspeed), whose LR the trainer reads back (scheduled_lr) and logs.
"""

from __future__ import annotations

from typing import Any, Protocol


class Backend(Protocol):
    name: str
    device: Any  # torch.device
    model: Any  # the wrapped module: call it for forward passes
    precision: str  # fp32 | bf16 | fp16, resolved (recipe precision `auto` decided for this device)
    last_step_skipped: bool  # train.on_nonfinite=skip: step() skipped its update (non-finite norm)
    input_dtype: Any  # float inputs are cast to this dtype (the engine casts the weights), or None

    def prepare(self, model: Any, groups: list[dict]) -> None: ...

    def backward(self, loss: Any, last: bool) -> None:
        """Backpropagate one micro-batch; gradients sync across ranks only when `last`."""

    def scheduled_lr(self) -> float | None:
        """The LR the engine's own scheduler set for the next update (a DeepSpeed config's scheduler,
        scheduler.name=deepspeed), read without a device sync; None when the trainer's closed-form
        schedule sets it."""

    def step(self, lr: float, step: int) -> Any:
        """Clip, update, zero grads; return the global grad norm (a tensor, no host sync), or None
        when the engine does not compute one."""

    def autocast(self) -> Any:
        """Context for forward passes (mixed precision)."""

    def save(self, files: Any) -> None:
        """Every rank writes its part of model + optimizer state through `files`
        (launcher.runtime.checkpoint.CheckpointFiles: the only way into a checkpoint)."""

    def load(self, directory: str) -> None: ...

    def sharded_by_rank(self, directory: str) -> bool:
        """Whether the checkpoint in `directory` holds per-rank slices of the state, which another
        world size can load only from the whole form (DeepSpeed ZeRO); then the backend also has
        write_full_form(directory, files, part, parts), each rank writing its part, and
        load_full(full_directory)."""

    def export_state_dict(self) -> dict | None:
        """The full model state dict on global rank 0 (consolidated from shards); None elsewhere."""

    def unwrapped(self) -> Any: ...
