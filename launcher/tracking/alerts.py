"""Alerts: the events a user wants pushed to them rather than found by watching a dashboard.

Kinds (tracking.alerts lists the wanted ones; all by default):
- failure: the job failed; sent by the launcher after its failure summary, whose first lines it
  carries (a dead rank 0 could not send it; engines/failure.py);
- preemption: the ranks stopped on a signal (Slurm's preemption or time-limit USR1, a cancel) with
  a checkpoint committed; a requeued job resumes there;
- nonfinite: the loss or gradient norm became NaN or inf;
- straggler: a rank is slower than the median for several log intervals (runtime/rank_timing.py);
- completion: the run reached train.steps.

Each goes to W&B as wandb's own alert (`run.alert`, which also emails or posts to Slack as the
user's W&B settings say; an offline run keeps it in its run file for `wandb sync`), to
TensorBoard as text under `alerts/<kind>`, and to metrics.jsonl as an `alert` record. One kind is
sent at most once per tracking.alert_interval_s (W&B is told the same, as its wait_duration):
a straggler that stays slow, or a run skipping NaN steps, does not flood anyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from launcher.config.schema import ALERT_KINDS  # noqa: F401 - the kinds, where the recipe names them

LEVELS = {"failure": "ERROR", "nonfinite": "ERROR", "preemption": "WARN", "straggler": "WARN", "completion": "INFO"}


class Alerts:
    """Rank 0's alerts: rate-limited per kind, sent to the trackers and recorded in metrics.jsonl."""

    def __init__(self, kinds: list[str], interval_s: float, tracker, record: Callable[[dict], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kinds, self.interval_s = frozenset(kinds), interval_s
        self.tracker, self.record, self.clock = tracker, record, clock
        self._last: dict[str, float] = {}

    def send(self, kind: str, step: int, title: str, text: str) -> bool:
        """True when sent; False when the kind is off or was sent less than interval_s ago."""
        if kind not in self.kinds:
            return False
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            return False
        self._last[kind] = now
        level = LEVELS[kind]
        self.record({"step": step, "alert": {"kind": kind, "level": level, "title": title, "text": text}})
        self.tracker.alert(kind, title, text, level, self.interval_s)
        return True


class NoAlerts:
    """Every rank but 0."""

    def send(self, kind: str, step: int, title: str, text: str) -> bool:
        return False


def send_failure_to_wandb(run_dir: str, title: str, text: str, status: int) -> None:
    """The launcher's failure alert to the job's W&B run: its own client, joining the run rank 0
    wrote to, which it also marks failed. The launcher runs this in a process of its own
    (engines/failure.py: send_alert), so that neither wandb nor a W&B outage reaches it."""
    from pathlib import Path

    from launcher.config.load import load_recipe
    from launcher.rundir.layout import RunDir
    from launcher.rundir.record import tracker_run_id
    from launcher.tracking.base import TrackerContext
    from launcher.tracking.wandb_tracker import open_tracker

    run = RunDir(run_dir)
    tracking = load_recipe(run.recipe).recipe.tracking
    tracker = open_tracker(TrackerContext(tracking, run_dir, tracker_run_id(run), Path(run_dir).name))
    tracker.alert("failure", title, text, LEVELS["failure"], tracking.alert_interval_s)
    tracker.finish(exit_code=status)


if __name__ == "__main__":
    import json
    import sys

    alert = json.load(sys.stdin)
    send_failure_to_wandb(alert["run_dir"], alert["title"], alert["text"], alert["status"])
