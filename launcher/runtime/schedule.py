"""Learning rate as a pure function of the optimizer step of the global batch.

Because it depends only on the step (never on processes, micro-steps or backend), the same
recipe draws the same LR curve on 1 or 64 GPUs, and a resumed run continues it exactly.
"""

from __future__ import annotations

import math

from launcher.config.schema import SchedulerConfig


def lr_at(step: int, base_lr: float, total_steps: int, cfg: SchedulerConfig) -> float:
    """LR used by optimizer step `step` (0-based, so step 0 is the first update)."""
    if step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps  # never 0: the first update moves
    after = step - cfg.warmup_steps
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "exponential":
        return base_lr * cfg.gamma ** (after / cfg.decay_steps)
    if cfg.name == "step":
        return base_lr * cfg.gamma ** (after // cfg.step_size)
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, after / span)
    floor = base_lr * cfg.min_lr_ratio
    if cfg.name == "linear":
        return floor + (base_lr - floor) * (1.0 - progress)
    if cfg.name == "cosine":
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"no closed form for the schedule {cfg.name!r} (deepspeed: the engine's scheduler sets the LR)")
