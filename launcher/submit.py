"""`launcher submit`: plan the job as it will run inside its Slurm allocation, then queue it.

    plan_submission(...) -> the sbatch script and what it needs, checked (bad recipes and
                            impossible batch arithmetic fail here, not after hours in the queue)
    queue(...)           -> the run directory claimed, job.sbatch written, the job id

Secrets given as overrides reach the job through the environment sbatch passes on, never the
script (launcher.secrets.split_secret_overrides).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launcher.config.errors import RecipeError
from launcher.config.load import LoadedRecipe
from launcher.slurm.sbatch import SbatchRequest


@dataclass(frozen=True)
class SubmitOptions:
    """The command line of `launcher submit`, beside the recipe and its overrides."""

    nodes: int = 1
    nproc: int | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 0
    time_limit: str = ""
    partition: str = ""
    account: str = ""
    signal_lead: int = 120
    requeue: bool = True
    sweep: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    run_dir: str | None = None
    allow_schedule_change: bool = False


@dataclass(frozen=True)
class Submission:
    script: str
    run_dir: Path
    loaded: LoadedRecipe
    resolved: dict
    sweep_tasks: int  # 0: a single job; N: an array of N sweep tasks
    secret_env: dict[str, str] = field(default_factory=dict)


def plan_submission(recipe_path: str, overrides: tuple[str, ...], options: SubmitOptions) -> Submission:
    """Everything checked and rendered; raises RecipeError. Nothing is written."""
    from launcher.plan.prepare import Placement, prepare
    from launcher.secrets import split_secret_overrides
    from launcher.slurm.sbatch import check_request, render_sbatch, slurm_job_name, sweep_tasks

    public, secret_env = split_secret_overrides(overrides)
    per_node = options.nproc or options.gpus_per_node or None
    request = SbatchRequest("", "", options.run_dir or "", os.getcwd(), sys.executable, options.nodes, options.nproc,
                            options.gpus_per_node, options.cpus_per_task, options.time_limit, options.partition,
                            options.account, options.signal_lead, options.requeue, tuple(public), options.sweep,
                            options.extra, secret_names=tuple(sorted(secret_env)),
                            allow_schedule_change=options.allow_schedule_change)
    _check(check_request(request))
    # Plan the job as it will run inside an allocation of `nodes` nodes, each sweep task.
    nodes = options.nodes
    fake_allocation = {"SLURM_JOB_ID": "0", "SLURM_JOB_NODELIST": f"node[1-{nodes}]" if nodes > 1 else "node1"}
    array = sweep_tasks(options.sweep)
    for sweep_task in array or [()]:
        loaded, launch_plan, resolved = prepare(recipe_path, (*public, *sweep_task),
                                                Placement(nproc=per_node, nodes=nodes, run_dir=options.run_dir),
                                                environ=fake_allocation)
    directory = Path(launch_plan.run_dir)
    request = dataclasses.replace(request, job_name=slurm_job_name(directory.name),
                                  recipe_path=str(Path(recipe_path).absolute()), run_dir=str(directory),
                                  nproc_per_node=per_node)
    _check(check_request(request))
    return Submission(render_sbatch(request), directory, loaded, resolved, len(array), secret_env)


def queue(recipe_path: str, submission: Submission, allow_schedule_change: bool) -> tuple[Path, str]:
    """Claim the run directory, write job.sbatch, sbatch it: (the script, the job id). Raises
    RunDirError or CheckpointError before anything is written, SlurmError when sbatch refuses."""
    from launcher.rundir import RunDir
    from launcher.slurm import jobs
    from launcher.start import claim_run

    kind = "sweep" if submission.sweep_tasks else "run"
    claim = claim_run(submission.loaded, str(submission.run_dir), submission.resolved, recipe_path,
                      allow_schedule_change, kind)
    try:
        claim.commit(kind)
        path = RunDir(submission.run_dir).sbatch
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(submission.script, encoding="utf-8")
        job_id = jobs.submit(path, submission.run_dir, array_tasks=submission.sweep_tasks,
                             secret_env=submission.secret_env)
    finally:
        claim.release()
    return path, job_id


def _check(problems: list) -> None:
    if problems:
        raise RecipeError("launcher submit", problems)
