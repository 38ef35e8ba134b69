"""What a NaN or an infinity in the loss or the gradient norm does to a run (train.on_nonfinite).

- stop (the default): every step adds its gradient norm to a sum on the device, with no host
  sync, as the trainer adds its loss to the log interval's sum: a NaN or an infinity makes a sum
  non-finite, and it stays so (one addition a step, fewer than testing each value). The sums are
  read where the loop syncs anyway (each log step, in the same all-reduce as the loss) and before
  anything is evaluated, saved or exported. A non-finite step ends the run
  there with a clear error, so no checkpoint or export ever holds non-finite weights: the last
  committed checkpoint is the last finite state.
- skip: the backend checks the gradient norm before each update (one host sync per step) and
  skips an update whose norm is not finite, as fp16 loss scaling does; the run stops once more
  than train.max_nonfinite_skips steps were skipped. Skipped steps are counted in the log lines.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from launcher.rundir import checkpoints as ckpt
from launcher.runtime.dist import all_reduce_sum


class NonFinite(RuntimeError):
    """The run stopped on a non-finite loss or gradient norm, without saving."""


class NonFiniteGuard:
    def __init__(self, policy: str, max_skips: int, device, start_step: int) -> None:
        self.policy, self.max_skips = policy, max_skips
        self.skipped = 0
        self._sum = torch.zeros((), dtype=torch.float64, device=device)  # non-finite: a non-finite step
        self._host_bad = False  # a gradient norm the backend already has on the host (DeepSpeed)
        self._checked_until = start_step

    def after_step(self, step: int, grad_norm, backend) -> bool:
        """Note the step; True when its loss counts (its update was applied)."""
        if self.policy == "skip":
            if backend.last_step_skipped:
                self.skipped += 1
                if self.skipped > self.max_skips:
                    raise NonFinite(f"step {step}: {self.skipped} steps skipped on a non-finite gradient norm, more "
                                    f"than train.max_nonfinite_skips={self.max_skips}; stopped without saving"
                                    + _hint())
                return False
            return True
        if grad_norm is None:  # the engine computed none; a non-finite update shows in the next loss
            return True
        if grad_norm.device == self._sum.device:
            self._sum += grad_norm
        else:
            self._host_bad = self._host_bad or not math.isfinite(float(grad_norm))
        return True

    def flag(self, interval_loss):
        """A device scalar > 0 when a gradient norm since the last check, or the interval's loss,
        was not finite; no sync."""
        bad = (~torch.isfinite(self._sum + interval_loss)).double()
        return bad + 1.0 if self._host_bad else bad

    def check(self, step: int, flag_value: float, checkpoints: Path) -> None:
        """Raise NonFinite when the (all-reduced) flag says a step was not finite."""
        if flag_value > 0:
            first = self._checked_until + 1
            raise NonFinite(f"the loss or the gradient norm became non-finite (NaN or inf) between steps {first} and "
                            f"{step}; stopped without saving or exporting (train.on_nonfinite=stop). "
                            f"{_last_checkpoint(checkpoints)}" + _hint())
        self._checked_until = step
        self._sum.zero_()  # the next check covers the steps from here (the sum never grows unbounded)

    def check_agreed(self, step: int, checkpoints: Path, interval_loss) -> None:
        """check() with the flag all-reduced first: every rank stops at the same step, or none does."""
        self.check(step, all_reduce_sum(self.flag(interval_loss)).item(), checkpoints)


def _last_checkpoint(root: Path) -> str:
    try:
        name = ckpt.read_pointer(root)
    except ckpt.CheckpointError:
        name = None
    if name is None:
        return "No checkpoint was committed before it."
    return f"The last checkpoint, {root / name}, was finite: a resume starts there."


def _hint() -> str:
    return ("\n      HINT: lower optimizer.lr, set optimizer.grad_clip (e.g. 1.0) or a warmup, or set "
            "train.on_nonfinite=skip to skip such updates (Accelerate)")
