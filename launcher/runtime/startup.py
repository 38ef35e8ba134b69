"""Where the time from `launcher run` to the first optimizer step goes (metrics.jsonl `startup`)."""

from __future__ import annotations

import os
import time


class StartupClock:
    """Where the time from `launcher run` to the first optimizer step goes, phase by phase.

    launch_overhead_s is what the launcher and the engines add: everything except the recipe's
    own build and the first step (which holds the first batch and the compilation)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.last = time.time()
        self.launched = float(os.environ.get("LAUNCHER_START_TIME") or 0)
        worker = float(os.environ.get("LAUNCHER_WORKER_START_TIME") or 0)
        if self.launched and worker:
            self.phases["to_worker_s"] = worker - self.launched  # CLI (validate, plan), torchrun, interpreter
            self.phases["imports_and_group_s"] = self.last - worker  # torch import, process group

    def mark(self, phase: str) -> None:
        now = time.time()
        self.phases[phase] = now - self.last
        self.last = now

    def report(self) -> dict:
        out = {"startup": {k: round(v, 3) for k, v in self.phases.items()}}
        if self.launched:
            total = self.last - self.launched
            out["launch_to_first_step_s"] = total
            out["launch_overhead_s"] = total - self.phases.get("build_s", 0) - self.phases.get("first_step_s", 0)
        return out
