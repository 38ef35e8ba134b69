"""After the ranks stopped on Slurm's USR1 and committed a checkpoint: requeue, or not?

USR1 comes either from `--signal=B:USR1@lead` shortly before the time limit (a timeout) or from
anyone who wants the job to make room (`scancel --signal=USR1 --batch`, a preemption hook). As in
submitit, they are told apart by the time left: within lead + margin of the limit it is a
timeout. Preemptions always requeue (the job did nothing wrong); timeouts requeue at most
`cluster.timeout_requeues` times, so a job that can never finish in its time limit stops instead
of looping forever. The counts live in <run_dir>/slurm/requeues.json (the run dir survives requeue).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from launcher.rundir.layout import RunDir

MARGIN_S = 90  # Slurm may send the signal up to a minute early; stopping takes a little too


@dataclass(frozen=True)
class Decision:
    cause: str  # "timeout" | "preemption"
    requeue: bool
    message: str


def decide(time_left: float | None, signal_lead_s: int, counts: dict[str, int], timeout_budget: int) -> Decision:
    is_timeout = time_left is not None and time_left <= signal_lead_s + MARGIN_S
    if not is_timeout:
        return Decision("preemption", True, "preempted: requeueing (preemptions do not use the timeout budget)")
    used = counts.get("timeout", 0)
    if used >= timeout_budget:
        return Decision("timeout", False, f"time limit reached; not requeued: {used} timeout requeue(s) used of "
                                          f"cluster.timeout_requeues={timeout_budget}. Raise --time or the budget.")
    return Decision("timeout", True, f"time limit reached: requeue {used + 1} of {timeout_budget}")


def read_counts(run_dir: Path) -> dict[str, int]:
    path = RunDir(run_dir).requeues
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def record(run_dir: Path, cause: str) -> dict[str, int]:
    counts = read_counts(run_dir)
    counts[cause] = counts.get(cause, 0) + 1
    path = RunDir(run_dir).requeues
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(counts) + "\n", encoding="utf-8")
    return counts
