"""The Run record: everything the training loop and its helpers read, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.plan.batch import BatchMath
from launcher.recipe_module import Task
from launcher.runtime.checkpoint import CheckpointManager
from launcher.runtime.dist import DistEnv
from launcher.runtime.metrics import MetricsLog
from launcher.runtime.startup import StartupClock


@dataclass
class Run:
    recipe: Any  # the validated Recipe (launcher.config.schema)
    task: Task
    backend: Any  # launcher.backends.base.Backend
    math: BatchMath  # from the plan: the batch arithmetic is computed once, by the launcher
    env: DistEnv
    run_dir: str
    startup: StartupClock
    checkpoints: CheckpointManager
    log: MetricsLog
    tracker: Any  # launcher.tracking.base.Tracker: the recipe's trackers on rank 0, a null one elsewhere
    start_step: int  # where this invocation starts (a resumed checkpoint's step, or 0)
    end_step: int  # where it stops: train.steps, or earlier with train.stop_after_steps
    run_id: str  # the tracker's run id, kept in every checkpoint
    alerts: Any = None  # launcher.tracking.alerts.Alerts on rank 0 (NoAlerts elsewhere)
    heartbeat: Any = None  # launcher.runtime.heartbeat.Heartbeat: this rank's step, for the hang watch

    @property
    def main(self) -> bool:
        return self.env.rank == 0
