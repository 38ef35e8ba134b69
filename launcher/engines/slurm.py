"""Inside a Slurm allocation: one srun step runs the node guard and torchrun on every node.

A stop reaches srun as USR1, which it relays to the node guards (they turn it into SIGTERM for
torchrun, which would die on USR1). After Slurm's own USR1 (a preemption, or the time limit
near), the ranks have committed a checkpoint and the job is requeued, within its budget.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from launcher.engines.base import EngineBase, NodeRequest
from launcher.engines.commands import Commands, LaunchView, LocalProcess, NodeCommand
from launcher.engines.remote import GUARD_MODULE


class SlurmEngine(EngineBase):
    name = "slurm"
    lists_nodes = True

    def commands(self, request: NodeRequest) -> Commands:
        guarded = (request.python, "-m", GUARD_MODULE, "--", *request.torchrun[0])
        nodes = tuple(NodeCommand(host, guarded, request.env) for host in request.hosts)
        return Commands(nodes, (LocalProcess(srun_argv(request.hosts, guarded), request.hosts, request.env),))

    def stop_signal(self, signum: int) -> int:
        return signal.SIGUSR1  # srun relays it to the node guards, which stop torchrun gracefully

    def after_stop(self, plan: LaunchView, status: int, timeout_requeues: int) -> int:
        if status != 128 + signal.SIGUSR1:
            return status
        return requeue_after_signal(plan, timeout_requeues, status)


def srun_argv(hosts: tuple[str, ...], command: tuple[str, ...]) -> tuple[str, ...]:
    # One task per node runs torchrun, which starts that node's ranks; --kill-on-bad-exit ends the
    # step when one node fails; --cpu-bind=none lets torchrun's ranks use all of the node's CPUs.
    return ("srun", f"--nodes={len(hosts)}", f"--ntasks={len(hosts)}", "--ntasks-per-node=1",
            f"--nodelist={','.join(hosts)}", "--kill-on-bad-exit=1", "--cpu-bind=none",
            "--export=ALL", "--", *command)


def requeue_after_signal(plan: LaunchView, timeout_budget: int, status: int) -> int:
    """Ranks stopped on Slurm's USR1 with a checkpoint: requeue this job, or explain why not."""
    from launcher.slurm import jobs, preemption

    job_id = plan.slurm_job_id
    if os.environ.get("SLURM_ARRAY_JOB_ID"):  # an array task is requeued by its array id
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    run_dir = Path(plan.run_dir)
    lead = int(os.environ.get("LAUNCHER_SLURM_SIGNAL_LEAD", "0") or 0)
    try:
        decision = preemption.decide(jobs.time_left_s(job_id), lead, preemption.read_counts(run_dir), timeout_budget)
        _say(decision.message)
        if not decision.requeue:
            return status
        preemption.record(run_dir, decision.cause)
        jobs.requeue(job_id)
    except jobs.SlurmError as error:
        _say(f"could not requeue: {error}")
        return status
    _say(f"job {job_id} requeued; it resumes from the last checkpoint")
    return 0


def _say(message: str) -> None:
    print(f"launcher: {message}", file=sys.stderr, flush=True)
