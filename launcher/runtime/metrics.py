"""Metrics out of the loop: a JSON-lines file (always, rank 0) and a console line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from launcher.durations import duration

# Dense peak FLOP/s per device and precision (NVIDIA's datasheets; the "with sparsity" figures
# halved), for MFU. fp32 is the plain fp32 rate: torch does not use TF32 for matmuls by default.
# Matched against torch.cuda.get_device_name() in this order, the specific SKUs first: an
# "NVIDIA H100 PCIe" is not an SXM H100. Unknown devices report no MFU rather than a guess.
_SXM_HOPPER = {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12}
_NVL_HOPPER = {"bf16": 835.5e12, "fp16": 835.5e12, "fp32": 60e12}
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.5e12, "fp16": 756.5e12, "fp32": 51.2e12}),
    ("H100 NVL", _NVL_HOPPER),
    ("H200 NVL", _NVL_HOPPER),
    ("GH200", _SXM_HOPPER),
    ("H100", _SXM_HOPPER),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", _SXM_HOPPER),  # SXM
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),  # SXM4 and PCIe alike
    ("L40S", {"bf16": 362.05e12, "fp16": 362.05e12, "fp32": 91.6e12}),
    ("A10G", {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12}),
)


def peak_flops(device_name: str | None, precision: str = "bf16") -> float | None:
    if not device_name:
        return None
    for key, peaks in PEAK_FLOPS:
        if key in device_name:
            return peaks.get(precision)
    return None


class MetricsLog:
    """Append-only JSONL on rank 0. On resume from step k, lines after k are dropped first so a
    restarted run never shows a step twice."""

    def __init__(self, path: Path, enabled: bool, resume_step: int) -> None:
        self.path, self.enabled = path, enabled
        self.previous_last_step = -1  # the furthest step an earlier attempt logged (-1: none)
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            self.previous_last_step = max(self.previous_last_step, int(record.get("step", 0)))
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")


_RANK_TIMINGS = ("data_s_max", "data_s_median", "data_s_min", "compute_s_max", "compute_s_median", "compute_s_min",
                 "slowest_rank")


class Progress:
    """Elapsed time and an ETA for rank 0's step line. The ETA comes from the measured step time
    (evaluation and saving excluded), smoothed over log intervals so one slow interval does not
    make it jump."""

    def __init__(self, end_step: int, started: float | None = None) -> None:
        self.end_step = end_step
        self.started = time.time() if started is None else started
        self._step_time: float | None = None

    def text(self, step: int, step_time_s: float, now: float | None = None) -> str:
        smoothed = self._step_time
        self._step_time = step_time_s if smoothed is None else 0.7 * smoothed + 0.3 * step_time_s
        elapsed = (time.time() if now is None else now) - self.started
        parts = [f"elapsed {duration(elapsed)}"]
        if step < self.end_step:
            parts.append(f"eta {duration((self.end_step - step) * self._step_time)}")
        return " | ".join(parts)


class StepProgress:
    """Rank 0's step in a small file, for the launcher's live bar (engines/live_bar.py): at most
    one write a second, so a step pays one clock read."""

    EVERY_S = 1.0

    def __init__(self, path: Path | None, total: int) -> None:
        self.path, self.total = path, total
        self._next = 0.0

    def tick(self, step: int, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now < self._next and not force:
            return
        self._next = now + self.EVERY_S
        partial = self.path.with_name(self.path.name + ".tmp")
        try:
            partial.write_text(json.dumps({"step": step, "total": self.total, "time": time.time()}), encoding="utf-8")
            partial.replace(self.path)  # the launcher never reads half a file
        except OSError:
            self.path = None  # a full or read-only disk: training goes on without the bar


def console_line(record: dict, total_steps: int, progress: str = "") -> str:
    parts = [f"step {record['step']}/{total_steps}"]
    formats = {"loss": "{:.4f}", "lr": "{:.3e}", "grad_norm": "{:.3f}", "samples_per_s": "{:.1f}",
               "tokens_per_s": "{:.0f}", "mfu": "{:.1%}", "step_time_s": None, "samples": None,
               # the ranks' own timings: metrics.jsonl and the trackers; a straggler gets its own line
               **dict.fromkeys(_RANK_TIMINGS)}
    for key, value in record.items():
        if key == "step" or not isinstance(value, (int, float)):
            continue  # a NaN is shown: a run going non-finite must be seen
        fmt = formats.get(key, "{:.4g}")
        if fmt:
            parts.append(f"{key} " + fmt.format(value))
    if progress:
        parts.append(progress)
    return " | ".join(parts)


def emit(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
