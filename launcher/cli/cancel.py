"""`launcher cancel RUN_DIR|JOB_ID`: scancel a submitted job, or stop a run `launcher run` started
on this machine (either way its ranks commit a checkpoint)."""

from __future__ import annotations

import sys

import click

from launcher.cli.common import fail


@click.command()
@click.argument("target", metavar="RUN_DIR|JOB_ID")
def cancel(target):
    """Cancel a submitted job (scancel), or stop a `launcher run` run on this machine: ranks get
    SIGTERM and commit a checkpoint."""
    from launcher.slurm import jobs

    try:
        job_id, _ = jobs.resolve_job(target)
    except jobs.SlurmError as error:
        if not _stop_local_run(target):
            fail(error)
        return
    try:
        jobs.cancel(job_id)
    except jobs.SlurmError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"launcher: cancelled job {job_id}", err=True)


def _stop_local_run(target: str) -> bool:
    """A run started with `launcher run` on this machine: SIGTERM to its launcher, which relays it
    to the ranks (they commit a checkpoint and stop), as Ctrl-C would. False: not such a run."""
    import os
    import signal
    import socket
    from pathlib import Path

    from launcher.cli.status import is_run_dir
    from launcher.rundir.layout import RunDir
    from launcher.rundir.lock import describe_holder, is_locked, read_holder

    run = RunDir(Path(target))
    if not is_run_dir(Path(target)):
        return False
    if not is_locked(run.lock):
        fail(ValueError(f"{target}: no launcher is running this run (no Slurm job either)\n      HINT: "
                        "`launcher status` says how it ended"))
    holder = read_holder(run.lock)
    pid, host = holder.get("pid"), holder.get("host")
    if host != socket.gethostname() or not isinstance(pid, int):
        fail(ValueError(f"{target}: its launcher runs as {describe_holder(holder)}\n      HINT: run `launcher "
                        f"cancel {target}` there, or press Ctrl-C in its terminal"))
    os.kill(pid, signal.SIGTERM)
    click.echo(f"launcher: stopping the run in {target} ({describe_holder(holder)}): its ranks commit a "
               "checkpoint; the same `launcher run` command continues it", err=True)
    return True
