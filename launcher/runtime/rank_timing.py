"""Where each rank spends its own step time, gathered once per log interval; stragglers named.

Under synchronous data parallelism every rank's step lasts as long as the slowest one's: the
others wait inside the collectives. What tells them apart is each rank's own time: waiting for
its next batch (data), and its forward pass (compute: under DDP and ZeRO-1/2 the forward holds no
collective, so a slow GPU or a throttled host shows there). Both are measured without a sync: a
clock around the loader, and around the forward on CPU or CUDA events on a GPU (read at the log
step, which syncs anyway). At each log step the trainer gathers them with the loss in a single
all_gather (see trainer._log_interval): no collective is added to any step.

A rank is a straggler when its data + compute per step is more than `train.straggler_slowdown`
(default 30%) above the median rank's, by at least 1 ms, for `train.straggler_intervals` log
intervals in a row (default 3; 0 turns the check off). Rank 0 then prints one line naming the rank,
its host and which part is slow, and records it in metrics.jsonl and the trackers; it says so again
only after the rank has recovered.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

_FLOOR_S = 0.001  # below a millisecond per step, a "slower" rank is noise of the clock


class RankTiming:
    """This rank's data wait and forward time since the last log step."""

    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"
        self.data_s = 0.0
        self._forward_s = 0.0
        self._events: list = []

    def waited_for_data(self, seconds: float) -> None:
        self.data_s += seconds

    @contextlib.contextmanager
    def forward(self):
        if self.cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((start, end))
        else:
            began = time.perf_counter()
            yield
            self._forward_s += time.perf_counter() - began

    def take(self) -> tuple[float, float]:
        """(data seconds, forward seconds) since the last take; called at log steps only."""
        forward = self._forward_s
        if self._events:
            self._events[-1][1].synchronize()  # a log step: the loss is about to be read anyway
            forward += sum(start.elapsed_time(end) for start, end in self._events) / 1000
        out = (self.data_s, forward)
        self.data_s, self._forward_s, self._events = 0.0, 0.0, []
        return out


@dataclass(frozen=True)
class Straggler:
    rank: int
    host: str
    slowdown: float  # over the median rank's data + compute per step
    cause: str  # "data" or "compute"
    data_s: float
    compute_s: float
    median_data_s: float
    median_compute_s: float

    def line(self, intervals: int) -> str:
        return (f"straggler: rank {self.rank} on {self.host} is {self.slowdown:.0%} slower than the median rank "
                f"for {intervals} log intervals; its {self.cause} is slow (data {self.data_s * 1e3:.1f} ms/step "
                f"against {self.median_data_s * 1e3:.1f}, compute {self.compute_s * 1e3:.1f} against "
                f"{self.median_compute_s * 1e3:.1f})")

    def record(self) -> dict:
        return {"rank": self.rank, "host": self.host, "slowdown": self.slowdown, "cause": self.cause,
                "data_s": self.data_s, "compute_s": self.compute_s}


def _per_step(per_rank: list[tuple[float, float]], steps: int) -> tuple[list[float], list[float], list[float]]:
    """Each rank's data, compute and data + compute seconds per step, from its interval sums."""
    data = [d / steps for d, _ in per_rank]
    compute = [c / steps for _, c in per_rank]
    return data, compute, [d + c for d, c in zip(data, compute, strict=True)]


def summary(per_rank: list[tuple[float, float]], steps: int, hosts: list[str]) -> dict:
    """Per-step data and compute seconds over the ranks (max, median, min) and the slowest rank."""
    data, compute, total = _per_step(per_rank, steps)
    slowest = max(range(len(total)), key=total.__getitem__)
    return {"data_s_max": max(data), "data_s_median": statistics.median(data), "data_s_min": min(data),
            "compute_s_max": max(compute), "compute_s_median": statistics.median(compute),
            "compute_s_min": min(compute), "slowest_rank": slowest, "slowest_host": hosts[slowest]}


class StragglerWatch:
    """Counts, per rank, the log intervals in a row it was slow; reports a rank once per episode."""

    def __init__(self, slowdown: float, intervals: int, hosts: list[str]) -> None:
        self.slowdown, self.intervals, self.hosts = slowdown, intervals, hosts
        self.slow_for = [0] * len(hosts)

    def check(self, per_rank: list[tuple[float, float]], steps: int) -> list[Straggler]:
        if not self.intervals or len(per_rank) < 2:
            return []
        data, compute, total = _per_step(per_rank, steps)
        median, median_data, median_compute = (statistics.median(v) for v in (total, data, compute))
        found = []
        for rank, own in enumerate(total):
            slow = own > (1 + self.slowdown) * median and own - median >= _FLOOR_S
            self.slow_for[rank] = self.slow_for[rank] + 1 if slow else 0
            if self.slow_for[rank] == self.intervals:
                cause = "data" if data[rank] - median_data >= compute[rank] - median_compute else "compute"
                found.append(Straggler(rank, self.hosts[rank], own / median - 1 if median else float("inf"), cause,
                                       data[rank], compute[rank], median_data, median_compute))
        return found
