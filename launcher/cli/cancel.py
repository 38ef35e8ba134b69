"""`launcher cancel RUN_DIR|JOB_ID`: scancel a submitted job (its ranks commit a checkpoint)."""

from __future__ import annotations

import sys

import click

from launcher.cli.common import fail


@click.command()
@click.argument("target", metavar="RUN_DIR|JOB_ID")
def cancel(target):
    """Cancel a submitted job (scancel): ranks get SIGTERM and commit a checkpoint."""
    from launcher.slurm import jobs

    try:
        job_id, _ = jobs.resolve_job(target)
    except jobs.SlurmError as error:
        fail(error)
    try:
        jobs.cancel(job_id)
    except jobs.SlurmError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    click.echo(f"launcher: cancelled job {job_id}", err=True)
