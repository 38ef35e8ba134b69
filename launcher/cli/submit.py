"""`launcher submit RECIPE`: plan the job as it will run inside its Slurm allocation, then queue it.

    submit(...)          the command: print the script (--dry-run), or queue it and print the job id
    plan_submission(...) -> the sbatch script and what it needs, checked (bad recipes and
                            impossible batch arithmetic fail here, not after hours in the queue)
    queue(...)           -> the run directory claimed, job.sbatch written, the job id

Secrets given as overrides reach the job through the environment sbatch passes on, never the
script (launcher.secrets.split_secret_overrides).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from launcher.cli.common import ALLOW_HELP, OVERRIDES_HELP, claim_run, recipe_argument, refusing
from launcher.config.errors import RecipeError

if TYPE_CHECKING:
    from launcher.config.load import LoadedRecipe
    from launcher.slurm.sbatch import SlurmOptions


@dataclass(frozen=True)
class Submission:
    script: str
    run_dir: Path
    loaded: LoadedRecipe
    resolved: dict
    sweep_tasks: int  # 0: a single job; N: an array of N sweep tasks
    secret_env: dict[str, str] = field(default_factory=dict)
    launch_plan: Any = None  # as the job will run in its allocation (the last sweep task's)


@click.command(epilog=OVERRIDES_HELP)
@recipe_argument
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Nodes to allocate.")
@click.option("--nproc", "nproc_per_node", type=click.IntRange(min=1),
              help="Processes per node (default: --gpus-per-node, else cluster.nproc_per_node).")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=0, help="GPUs per node to allocate.")
@click.option("--cpus-per-task", type=click.IntRange(min=0), default=0, help="CPUs per node for its torchrun.")
@click.option("--time", default="", help="Time limit, e.g. 4:00:00 or 2-00:00:00.")
@click.option("--partition", default="", help="Slurm partition.")
@click.option("--account", default="", help="Slurm account.")
@click.option("--signal-lead", "signal_lead_s", type=click.IntRange(min=0), default=120, show_default=True,
              help="Seconds before the time limit when Slurm sends USR1: a checkpoint, then a requeue.")
@click.option("--requeue/--no-requeue", default=True, show_default=True, help="Let Slurm requeue the job.")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2", help="A job array: one task per combination.")
@click.option("--sbatch", "extra", multiple=True, metavar="--OPTION=VALUE", help="More #SBATCH options.")
@click.option("--run-dir", help="Run directory (default: <output_dir>/<name>).")
@click.option("--dry-run", is_flag=True, help="Print the sbatch script; submit nothing.")
@click.option("--allow-schedule-change", is_flag=True, help=ALLOW_HELP)
@click.option("--device-memory", metavar="SIZE", help="Memory of one rank's GPU, e.g. 80GiB (default: the "
                                                      "partition's GPU type, when Slurm names a known one; "
                                                      "without GPUs, its nodes' memory / processes per node).")
@click.option("--no-memory-check", is_flag=True, help="Queue and start it even when the memory estimate says it will "
                                                      "not fit.")
def submit(recipe_path, overrides, run_dir, dry_run, device_memory, no_memory_check, **slurm):
    """Submit the recipe to Slurm as a batch job (from a login node); print the job id."""
    from launcher.slurm.jobs import SlurmError
    from launcher.slurm.sbatch import SlurmOptions

    options = SlurmOptions(**slurm, device_memory=device_memory or "", memory_check=not no_memory_check)
    submission = refusing(lambda: plan_submission(recipe_path, overrides, options, run_dir))
    if options.memory_check:
        refusing(lambda: check_memory(recipe_path, overrides, submission, options))
    if dry_run:
        click.echo(submission.script, nl=False)
        return
    try:
        path, job_id = refusing(lambda: queue(recipe_path, submission, options.allow_schedule_change))
    except SlurmError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"launcher: submitted {path} as job {job_id}; follow with `launcher logs {submission.run_dir} -f`",
               err=True)
    click.echo(job_id)


def plan_submission(recipe_path: str, overrides: tuple[str, ...], options: SlurmOptions,
                    run_dir: str | None = None) -> Submission:
    """Everything checked and rendered; raises RecipeError. Nothing is written."""
    from launcher.plan.prepare import Placement, prepare
    from launcher.secrets import split_secret_overrides
    from launcher.slurm.sbatch import (
        SbatchRequest,
        check_options,
        check_run_dir,
        render_sbatch,
        slurm_job_name,
        sweep_tasks,
    )

    _check(check_options(options))  # the flags, before planning uses them (the sweep's product)
    public, secret_env = split_secret_overrides(overrides)
    # Plan the job as it will run inside an allocation of `nodes` nodes, each sweep task.
    nodes = options.nodes
    fake_allocation = {"SLURM_JOB_ID": "0", "SLURM_JOB_NODELIST": f"node[1-{nodes}]" if nodes > 1 else "node1"}
    array = sweep_tasks(options.sweeps)
    for sweep_task in array or [()]:
        loaded, launch_plan, resolved = prepare(recipe_path, (*public, *sweep_task),
                                                Placement(nproc=options.processes_per_node, nodes=nodes,
                                                          run_dir=run_dir),
                                                environ=fake_allocation)
    directory = Path(launch_plan.run_dir)
    _check(check_run_dir(str(directory)))
    request = SbatchRequest(job_name=slurm_job_name(directory.name), recipe_path=str(Path(recipe_path).absolute()),
                            run_dir=str(directory), workdir=os.getcwd(), python=sys.executable, options=options,
                            overrides=tuple(public), secret_names=tuple(sorted(secret_env)))
    return Submission(render_sbatch(request), directory, loaded, resolved, len(array), secret_env, launch_plan)


def check_memory(recipe_path: str, overrides: tuple[str, ...], submission: Submission, options: SlurmOptions) -> None:
    """Refuse, before the queue, a job predicted not to fit: its GPUs' size from --device-memory or
    the partition's GPU type (sinfo); without GPUs, its nodes' memory (sinfo) shared by the
    processes of a node. Not checked when Slurm says neither."""
    from launcher.cli.common import refuse_if_it_does_not_fit
    from launcher.slurm.jobs import partition_gpu_types, partition_node_memory

    gpu, device_memory = options.gpus_per_node > 0, options.device_memory
    where: dict = {"gpu": gpu}
    if gpu and not device_memory:
        where["gpu_types"] = tuple(partition_gpu_types(options.partition))
    elif not gpu and not device_memory:
        where["node_memory"] = partition_node_memory(options.partition)
    if device_memory or where.get("gpu_types") or where.get("node_memory"):
        refuse_if_it_does_not_fit(recipe_path, overrides, submission.loaded, submission.launch_plan, device_memory,
                                  **where)


def queue(recipe_path: str, submission: Submission, allow_schedule_change: bool) -> tuple[Path, str]:
    """Claim the run directory, write job.sbatch, sbatch it: (the script, the job id). Raises
    RunDirError or CheckpointError before anything is written, SlurmError when sbatch refuses."""
    from launcher.rundir import RunDir
    from launcher.slurm import jobs

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
