"""`train.profile_steps: N`: a torch.profiler window over N optimizer steps of rank 0.

It answers "where does the step time go" without editing the recipe: after a few steps that hold
compilation and allocator warm-up, N steps are recorded, then the run goes on unprofiled. Written
to RUN_DIR/profile/:
    trace.json     the Chrome/Perfetto trace (chrome://tracing, ui.perfetto.dev)
    summary.txt    the top operators by self time on the device (CPU when there is no GPU)
    summary.json   wall time per step, device busy time per step and their ratio, top operators

Device busy time is the sum of kernel self times; kernels on overlapping streams (NCCL next to
compute) count twice, so a busy fraction near or above 1 on multi-GPU runs means overlap, not
a fully used device. A busy fraction well below 1 on one GPU is time the device sat waiting on
the host: the data loader, Python overhead, a host sync.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

WARMUP_STEPS = 3  # not profiled: compilation, autotuning, allocator growth
TOP_OPERATORS = 25


def profile_window(remaining_steps: int, requested: int) -> tuple[int, int]:
    """(steps skipped before the profiler's one warm-up step, steps recorded) in a run of
    `remaining_steps`: the recorded window is cut to what the run has left, never to nothing when
    the run has two steps or more."""
    if requested <= 0 or remaining_steps < 2:
        return 0, 0
    active = min(requested, remaining_steps - 1)
    skip = max(0, min(WARMUP_STEPS, remaining_steps - 1 - active))
    return skip, active


class StepProfiler:
    """Call step() after every optimizer step; inert when disabled, stopped after its window."""

    def __init__(self, out_dir: Path, device: torch.device, skip: int, active: int) -> None:
        self.out_dir = out_dir
        self.device = device
        self.skip, self.active = skip, active
        self.steps_seen = 0
        self.started_at = 0.0
        self.wall_s = 0.0
        self.written = False
        self._profiler = None
        if active <= 0:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=skip, warmup=1, active=active, repeat=1),
            on_trace_ready=self._write)
        self._profiler.start()

    def step(self) -> None:
        if self._profiler is None:
            return
        self.steps_seen += 1
        if self.steps_seen == self.skip + 1:  # the recorded window starts after this step
            self._synchronize()
            self.started_at = time.perf_counter()
        elif self.steps_seen == self.skip + 1 + self.active:  # ... and ends here, before the
            self._synchronize()  # profiler spends its own time collecting the events
            self.wall_s = time.perf_counter() - self.started_at
        self._profiler.step()
        if self.written:  # the window is over: the rest of the run goes unprofiled
            self._profiler.stop()
            self._profiler = None

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _write(self, profiler) -> None:
        self.written = True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(self.out_dir / "trace.json"))
        on_device = self.device.type == "cuda"
        sort_key = "self_device_time_total" if on_device else "self_cpu_time_total"
        averages = profiler.key_averages()
        (self.out_dir / "summary.txt").write_text(
            averages.table(sort_by=sort_key, row_limit=TOP_OPERATORS) + "\n", encoding="utf-8")
        self._write_json(averages, sort_key, on_device)

    def _write_json(self, averages, sort_key: str, on_device: bool) -> None:
        rows = sorted(averages, key=lambda e: getattr(e, sort_key), reverse=True)
        busy_us = sum(e.self_device_time_total for e in averages) if on_device else None
        wall = self.wall_s
        summary = {
            "device": torch.cuda.get_device_name(self.device) if on_device else "cpu",
            "steps": self.active,
            "wall_s_per_step": wall / self.active,
            "device_busy_s_per_step": busy_us / 1e6 / self.active if busy_us is not None else None,
            "device_busy_fraction": busy_us / 1e6 / wall if busy_us is not None and wall > 0 else None,
            "top": [{"name": e.key, "calls": e.count,
                     "self_s_per_step": getattr(e, sort_key) / 1e6 / self.active}
                    for e in rows[:TOP_OPERATORS]],
        }
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
