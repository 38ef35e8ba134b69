"""The `launcher` command. Keep this module light: --help and `plan` must never import torch."""

from __future__ import annotations

import sys
import time
from typing import NoReturn

import click

from launcher.config.errors import EXIT_BAD_INPUT

STARTED_AT = time.time()  # launch time (`launcher run` to the first optimizer step) counts from here

_OVERRIDES_HELP = "Overrides: `section.key=value` sets a key, `~section.key` deletes it."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="launcher")
def main() -> None:
    """Turn one recipe file into a distributed training job.

    \b
    launcher ls                                   built-in recipes
    launcher cp mlp-tiny my.yaml                  copy a shipped recipe file to edit
    launcher validate recipes/mlp-tiny.yaml       check a recipe (all errors at once)
    launcher plan recipes/mlp-tiny.yaml --nproc 2 show what would run, start nothing
    launcher run recipes/mlp-tiny.yaml --nproc 2 optimizer.lr=3e-3
    """


def _fail(error: Exception) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _prepare(recipe_path: str, overrides: tuple[str, ...], placement: dict):
    """Recipe + flags -> (loaded recipe, plan, resolved dict). Exits 2 on bad input."""
    from launcher.config.errors import RecipeError
    from launcher.plan.prepare import Placement, prepare

    master_addr = placement.pop("master_addr", None)
    if master_addr:  # a recipe key like any other: recorded in recipe.yaml, checked by the schema
        overrides = (*overrides, f"cluster.master_addr={master_addr}")
    try:
        return prepare(recipe_path, overrides, Placement(**placement))
    except RecipeError as error:
        _fail(error)


def _recipe_file(ctx, param, value):
    """Click callback: a shipped recipe's name (`mlp-tiny`) means its file (launcher.catalog)."""
    from launcher.catalog import resolve_recipe_file

    if isinstance(value, tuple):
        return tuple(resolve_recipe_file(v) for v in value)
    return resolve_recipe_file(value)


_common = [
    click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False), callback=_recipe_file),
    click.argument("overrides", nargs=-1, metavar="[KEY=VALUE | ~KEY]..."),
    click.option("--nproc", type=click.IntRange(min=1), help="Processes per node (default: cluster.nproc_per_node)."),
    click.option("--nodes", type=click.IntRange(min=1), help="Number of nodes (default: cluster.nodes)."),
    click.option("--hostfile", type=click.Path(dir_okay=False), help="DeepSpeed-style hostfile: `host slots=N` lines."),
    click.option("--include", default="", help="Hostfile filter, DeepSpeed syntax: `host1:0,1@host2` keeps these."),
    click.option("--exclude", default="", help="Hostfile filter, DeepSpeed syntax: `host1:0@host3` drops these."),
    click.option("--run-dir", help="Run directory (default: <output_dir>/<name>; reused to resume)."),
    click.option("--master-addr", help="Rendezvous host the nodes dial (default: the first node's name; "
                                       "cluster.master_addr)."),
]


def _with_common(func):
    for decorator in reversed(_common):
        func = decorator(func)
    return func


@main.command(epilog=_OVERRIDES_HELP)
@_with_common
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(recipe_path, overrides, as_json, **placement):
    """Print the resolved recipe, the batch arithmetic and every command; start nothing."""

    import yaml

    from launcher.plan.launch import render_plan
    from launcher.rundir.record import plan_json

    _, launch_plan, resolved = _prepare(recipe_path, overrides, placement)
    if as_json:
        click.echo(plan_json({"recipe": resolved, "plan": launch_plan.to_dict()}), nl=False)
    else:
        click.echo(render_plan(launch_plan, yaml.safe_dump(resolved, sort_keys=False)), nl=False)


_ALLOW_HELP = "Continue a run whose train.steps, optimizer or scheduler values changed (recorded in run.json)."


@main.command(epilog=_OVERRIDES_HELP)
@_with_common
@click.option("--no-preflight", is_flag=True, help="Skip the ssh/port checks of hostfile hosts.")
@click.option("--allow-schedule-change", is_flag=True, help=_ALLOW_HELP)
@click.option("-v", "--verbose", is_flag=True,
              help="Show third-party notices the console holds back (LAUNCHER_VERBOSE=1; always in the rank logs).")
def run(recipe_path, overrides, no_preflight, allow_schedule_change, verbose, **placement):
    """Write the run directory, then start the job and wait for it (exit status = the job's).

    \b
    One node: torchrun. --hostfile: one torchrun per host over pdsh (or ssh).
    Inside a Slurm allocation (salloc/sbatch): one torchrun per node with srun.
    A run directory belongs to one experiment and one launcher at a time (run.json, .lock).
    """
    import os

    from launcher.start import check_deepspeed_passthrough, claim_run, start_run

    if verbose:
        os.environ["LAUNCHER_VERBOSE"] = "1"  # every rank's environment, on every engine (LAUNCHER_*)
    loaded, launch_plan, resolved = _prepare(recipe_path, overrides, placement)

    def checked_claim():
        check_deepspeed_passthrough(recipe_path, loaded.recipe, launch_plan.math)
        return claim_run(loaded, launch_plan.run_dir, resolved, recipe_path, allow_schedule_change)

    claim = _refusing(checked_claim)
    try:
        status = _refusing(lambda: start_run(loaded, launch_plan, resolved, claim, not no_preflight, STARTED_AT))
    finally:
        claim.release()
    sys.exit(status)


def _refusing(action):
    """action(), with the problems a user can fix (a recipe, a run directory, a checkpoint, a host
    that fails pre-flight) turned into `error: ...` and exit 2: nothing was started."""
    from launcher.config.errors import RecipeError
    from launcher.rundir.claim import RunDirError
    from launcher.runtime.checkpoint import CheckpointError
    from launcher.start import PreflightFailed

    try:
        return action()
    except (RecipeError, RunDirError, CheckpointError, PreflightFailed) as error:
        _fail(error)


@main.command(epilog=_OVERRIDES_HELP)
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False), callback=_recipe_file)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE | ~KEY]...")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Nodes to allocate.")
@click.option("--nproc", type=click.IntRange(min=1), help="Processes per node (default: --gpus-per-node, "
              "else cluster.nproc_per_node).")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=0, help="GPUs per node to allocate.")
@click.option("--cpus-per-task", type=click.IntRange(min=0), default=0, help="CPUs per node for its torchrun.")
@click.option("--time", "time_limit", default="", help="Time limit, e.g. 4:00:00 or 2-00:00:00.")
@click.option("--partition", default="", help="Slurm partition.")
@click.option("--account", default="", help="Slurm account.")
@click.option("--signal-lead", type=click.IntRange(min=0), default=120, show_default=True,
              help="Seconds before the time limit when Slurm sends USR1: a checkpoint, then a requeue.")
@click.option("--requeue/--no-requeue", default=True, show_default=True, help="Let Slurm requeue the job.")
@click.option("--sweep", multiple=True, metavar="KEY=V1,V2", help="A job array: one task per combination.")
@click.option("--sbatch", "extra", multiple=True, metavar="--OPTION=VALUE", help="More #SBATCH options.")
@click.option("--run-dir", help="Run directory (default: <output_dir>/<name>).")
@click.option("--dry-run", is_flag=True, help="Print the sbatch script; submit nothing.")
@click.option("--allow-schedule-change", is_flag=True, help=_ALLOW_HELP)
def submit(recipe_path, overrides, dry_run, **options):
    """Submit the recipe to Slurm as a batch job (from a login node); print the job id."""
    from launcher.slurm.jobs import SlurmError
    from launcher.submit import SubmitOptions, plan_submission, queue

    options = SubmitOptions(**options)
    submission = _refusing(lambda: plan_submission(recipe_path, overrides, options))
    if dry_run:
        click.echo(submission.script, nl=False)
        return
    try:
        path, job_id = _refusing(lambda: queue(recipe_path, submission, options.allow_schedule_change))
    except SlurmError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"launcher: submitted {path} as job {job_id}; follow with `launcher logs {submission.run_dir} -f`",
               err=True)
    click.echo(job_id)


def _job(target: str):
    from launcher.slurm import jobs

    try:
        return jobs.resolve_job(target)
    except jobs.SlurmError as error:
        _fail(error)


@main.command()
@click.argument("target", metavar="RUN_DIR|JOB_ID")
def status(target):
    """State of a submitted job, and the run's last logged step. For a run started with `launcher
    run`: whether its ranks still run, its last step, newest checkpoint and failure."""
    from pathlib import Path

    from launcher import run_status
    from launcher.rundir import RunDir
    from launcher.slurm import jobs

    try:
        job_id, run_dir = jobs.resolve_job(target)
    except jobs.SlurmError as error:
        if not run_status.is_run_dir(Path(target)):
            _fail(error)
        click.echo("\n".join(run_status.describe(Path(target))))  # started with `launcher run`
        return
    try:
        state = jobs.job_state(job_id)
    except jobs.SlurmError as error:
        _fail(error)
    if not state:
        click.echo(f"job {job_id}: unknown to slurmctld (finished long ago, or never existed)")
    else:
        keys = ("JobState", "Reason", "RunTime", "TimeLimit", "NodeList", "Restarts", "ExitCode")
        click.echo(f"job {job_id}: " + "  ".join(f"{k}={state[k]}" for k in keys if k in state))
    step = run_status.last_step(RunDir(run_dir).metrics) if run_dir else None
    if step:
        click.echo(f"last step {step['step']}: loss {step['loss']:.4g}")


@main.command()
@click.argument("target", metavar="RUN_DIR|JOB_ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the Slurm job ends.")
@click.option("--rank", default=0, show_default=True, type=click.IntRange(min=0),
              help="A `launcher run` run: whose log (the node's local rank).")
def logs(target, follow, rank):
    """Print the Slurm output of a submitted job; for a run started with `launcher run`, one
    rank's own log files (every launch and restart, oldest first)."""
    import time
    from pathlib import Path

    from launcher import run_status
    from launcher.slurm import jobs

    try:
        job_id, run_dir = jobs.resolve_job(target)
    except jobs.SlurmError as error:
        if not run_status.is_run_dir(Path(target)):
            _fail(error)
        _print_rank_logs(Path(target), rank)
        return
    offsets: dict = {}
    while True:
        for path in jobs.log_files(job_id, run_dir):
            with open(path, encoding="utf-8", errors="replace") as handle:
                handle.seek(offsets.get(path, 0))
                click.echo(handle.read(), nl=False)
                offsets[path] = handle.tell()
        if not follow or jobs.job_state(job_id).get("JobState") not in jobs.ACTIVE_STATES:
            return
        time.sleep(1)


def _print_rank_logs(run_dir, rank: int) -> None:
    from launcher.run_logs import rank_log_files

    files = rank_log_files(run_dir, rank)
    if not files:
        _fail(ValueError(f"{run_dir}: no log of rank {rank} yet (logs/torchrun/)\n"
                         "      HINT: a run that never started its ranks has none; see `launcher status`"))
    for title, path in files:
        click.echo(f"==> {title} ({path}) <==")
        click.echo(path.read_text(encoding="utf-8", errors="replace"), nl=False)


@main.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the PNG (default: RUN_DIR/report.png).")
def report(run_dir, output):
    """Plot a run's loss, evaluation metrics, learning rate and throughput over its steps into a
    PNG, resumes and restarts marked."""
    from pathlib import Path

    from launcher.rundir import RunDir

    run = RunDir(run_dir)
    if not run.metrics.is_file():
        _fail(ValueError(f"{run_dir}: no metrics.jsonl\n      HINT: give a run directory that has logged a step"))
    try:
        from launcher.report import draw, read_history
    except ImportError as error:  # matplotlib comes with the tracking extra
        _fail(ValueError(f"launcher report needs matplotlib ({error})\n      HINT: pip install matplotlib"))
    history = read_history(run.metrics)
    if not history.train and not history.evals:
        _fail(ValueError(f"{run.metrics}: no step logged yet\n      HINT: wait for the first log step"))
    path = draw(history, Path(run_dir).resolve().name, Path(output) if output else run.report)
    click.echo(f"wrote {path}")


@main.command(epilog=_OVERRIDES_HELP)
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False), callback=_recipe_file)
@click.argument("overrides", nargs=-1, metavar="KEY=V1,V2... [KEY=VALUE...]")
@click.option("--nproc", type=click.IntRange(min=1), help="Processes per point (default: cluster.nproc_per_node).")
@click.option("-k", "--parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Points run side by side (their consoles go to RUN_DIR/logs/task-N.log).")
@click.option("--run-dir", help="The sweep's directory; point i runs in RUN_DIR/task-i.")
@click.option("--allow-schedule-change", is_flag=True, help=_ALLOW_HELP)
def sweep(recipe_path, overrides, nproc, parallel, run_dir, allow_schedule_change):
    """Run a grid of points on this machine: each KEY=V1,V2 is an axis, every combination a run
    of its own (RUN_DIR/task-N). The same command again runs only the points not done. Ends with
    the comparison table and RUN_DIR/compare.png. (`launcher submit --sweep` makes a Slurm array.)"""
    from launcher.sweep import plan_sweep, run_sweep

    loaded, resolved, plan = _refusing(lambda: plan_sweep(recipe_path, overrides, nproc, run_dir))
    sys.exit(_refusing(lambda: run_sweep(recipe_path, loaded, resolved, plan, nproc, parallel,
                                         allow_schedule_change)))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="compare.png", show_default=True,
              help="Where to write the PNG of the overlaid curves.")
def compare(run_dirs, output):
    """Final and best evaluation metrics of runs side by side (a sweep's directory: its points),
    and their curves overlaid in one PNG."""
    from pathlib import Path

    from launcher.compare import expand, plot, table

    runs = expand([Path(d) for d in run_dirs])
    if not runs:
        _fail(ValueError(f"no metrics.jsonl in {', '.join(run_dirs)}\n      HINT: give run directories (or a "
                         "sweep's) that have logged a step"))
    click.echo(table(runs), nl=False)
    try:
        path = plot(runs, ", ".join(Path(d).name for d in run_dirs), Path(output))
    except ImportError as error:
        _fail(ValueError(f"the PNG needs matplotlib ({error})\n      HINT: pip install matplotlib"))
    click.echo(f"wrote {path}", err=True)


@main.command()
@click.argument("target", metavar="RUN_DIR|JOB_ID")
def cancel(target):
    """Cancel a submitted job (scancel): ranks get SIGTERM and commit a checkpoint."""
    from launcher.slurm import jobs

    job_id, _ = _job(target)
    try:
        jobs.cancel(job_id)
    except jobs.SlurmError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"launcher: cancelled job {job_id}", err=True)


@main.command()
@click.argument("recipe_paths", nargs=-1, required=True, metavar="RECIPE...", type=click.Path(dir_okay=False),
                callback=_recipe_file)
def validate(recipe_paths):
    """Check recipe files (schema, batch arithmetic for their cluster); exit 2 on any problem."""
    from launcher.config.errors import RecipeError
    from launcher.plan.prepare import prepare
    from launcher.start import check_deepspeed_passthrough

    failed = 0
    for path in recipe_paths:
        try:
            # The whole planning pipeline, so batch arithmetic and hostfiles are checked too.
            loaded, launch_plan, _ = prepare(path, ())
            check_deepspeed_passthrough(path, loaded.recipe, launch_plan.math)
            click.echo(f"ok: {path}")
        except RecipeError as error:
            failed += 1
            click.echo(f"error: {error}", err=True)
    if failed:
        sys.exit(EXIT_BAD_INPUT)


@main.command(name="ls")
def list_recipes():
    """List built-in recipe modules and the recipe files shipped with the launcher."""
    from launcher.catalog import builtin_modules, shipped_recipe_files

    click.echo("recipe modules (use as `recipe: NAME`):")
    for name, description in builtin_modules():
        click.echo(f"  {name:<20} {description}")
    files = shipped_recipe_files()
    if files:
        click.echo("recipe files (run by name from anywhere, e.g. `launcher run mlp-tiny`, or copy and edit):")
        for path, description in files:
            click.echo(f"  {path.removeprefix('recipes/').removesuffix('.yaml'):<26} {description}")


@main.command(name="cp")
@click.argument("name", metavar="NAME")
@click.argument("destination", metavar="DEST", type=click.Path())
def copy_recipe(name, destination):
    """Copy the shipped recipe file NAME (see `launcher ls`) to DEST, a file or a directory, to edit
    it. Never overwrites."""
    import difflib
    import os
    import shutil

    from launcher.catalog import shipped_recipe, shipped_recipe_names

    source = shipped_recipe(name)
    if source is None:
        names = shipped_recipe_names()
        close = difflib.get_close_matches(name.removesuffix(".yaml"), names, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"one of: {', '.join(names)}"
        _fail(ValueError(f"no shipped recipe named `{name}`\n      HINT: {hint}"))
    target = os.path.join(destination, source.name) if os.path.isdir(destination) else destination
    try:
        with open(source, "rb") as reader, open(target, "xb") as writer:  # "x": never clobber an edited copy
            shutil.copyfileobj(reader, writer)
    except FileExistsError:
        _fail(ValueError(f"{target}: already exists\n      HINT: give another name, or remove it first"))
    except OSError as error:
        _fail(ValueError(f"{target}: cannot write: {error.strerror}\n      HINT: check the directory exists"))
    click.echo(f"wrote {target}; run it with `launcher run {target}`")


if __name__ == "__main__":
    main()
