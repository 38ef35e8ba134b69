"""`launcher status RUN_DIR|JOB_ID`: a submitted job's Slurm state and its last logged step; for
a run started with `launcher run` (no Slurm job to ask), the run directory's state, read without
torch.

Everything comes from the run directory: the rank records say where the ranks run (and are
checked against the process table when they run on this host), the lock whether a launcher works
in it, metrics.jsonl the last step, the `latest` pointer the newest committed checkpoint (verified
file by file, checksums included, as a resume would), logs/failure.json how the job failed.
Standard library, yaml and xxhash only: the CLI answers without importing torch.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import click
import yaml

from launcher.cli.common import fail
from launcher.engines.failure import rank_records
from launcher.rundir import checkpoints as ckpt
from launcher.rundir.layout import RunDir
from launcher.rundir.lock import describe_holder, is_locked, read_holder


@click.command()
@click.argument("target", metavar="RUN_DIR|JOB_ID")
def status(target):
    """State of a submitted job, and the run's last logged step. For a run started with `launcher
    run`: whether its ranks still run, its last step, newest checkpoint and failure."""
    from launcher.slurm import jobs

    try:
        job_id, run_dir = jobs.resolve_job(target)
    except jobs.SlurmError as error:
        if not is_run_dir(Path(target)):
            fail(error)
        click.echo("\n".join(describe(Path(target))))  # started with `launcher run`
        return
    try:
        state = jobs.job_state(job_id)
    except jobs.SlurmError as error:
        fail(error)
    if not state:
        click.echo(f"job {job_id}: unknown to slurmctld (finished long ago, or never existed)")
    else:
        keys = ("JobState", "Reason", "RunTime", "TimeLimit", "NodeList", "Restarts", "ExitCode")
        click.echo(f"job {job_id}: " + "  ".join(f"{k}={state[k]}" for k in keys if k in state))
    step = last_step(RunDir(run_dir).metrics) if run_dir else None
    if step:
        click.echo(f"last step {step['step']}: loss {step['loss']:.4g}")


def is_run_dir(path: Path) -> bool:
    run = RunDir(path)
    return run.recipe.is_file() and run.plan.is_file()


def describe(run_dir: Path) -> list[str]:
    run = RunDir(run_dir)
    recipe = _read_yaml(run.recipe)
    total = (recipe.get("train") or {}).get("steps")
    metrics = run.metrics
    step = last_step(metrics)
    failure_file = run.failure
    failure = _read_json(failure_file)
    records = rank_records(run_dir)
    here = socket.gethostname()
    alive = [r for r in records if r.get("host") == here and _runs_for(r.get("pid"), run_dir)]
    remote = sorted({str(r.get("host")) for r in records if r.get("host") != here})
    if alive:
        state = f"running: {len(alive)} rank(s) on this host (pids {', '.join(str(r['pid']) for r in alive)})"
    elif is_locked(run.lock):
        state = f"running: its launcher is {describe_holder(read_holder(run.lock))}"
    elif remote:
        state = f"ranks on {', '.join(remote)}: not checked from this host"
    elif not records:
        state = "no rank started"
    elif step and step["step"] == total:
        state = "finished"
    elif failure and (not metrics.exists() or failure_file.stat().st_mtime >= metrics.stat().st_mtime):
        message = str(failure.get("message") or "").splitlines()
        state = (f"failed: rank {failure.get('rank')} on {failure.get('host')}, exit code {failure.get('exit')}"
                 + (f": {message[0]}" if message else "") + " (logs/failure.json)")
    else:
        state = "stopped: the same `launcher run` command resumes it"
    if records:
        state += f"; attempt {max(int(r.get('attempt', 0)) for r in records)}"
    lines = [f"run {run_dir}: started with `launcher run` (no Slurm job)", f"  state: {state}"]
    if step:
        lines.append(f"  last step {step['step']}/{total}: loss {step['loss']:.4g}")
    checkpoints = run.checkpoints((recipe.get("checkpoint") or {}).get("dir") or "")
    lines.append(f"  latest checkpoint: {_checkpoint_state(checkpoints)}")
    return lines


def _checkpoint_state(root: Path) -> str:
    """The checkpoint a resume would load, checked as the resume checks it."""
    try:
        directory = ckpt.find_resume_dir(root, "auto")
        if directory is None:
            return "none committed yet"
        meta = ckpt.verify(directory)
    except ckpt.CheckpointError as error:
        return "DAMAGED: " + str(error).replace("\n      HINT:", "; hint:")
    return f"{directory} (step {meta.get('step')}; every file matches its manifest)"


def _runs_for(pid: object, run_dir: Path) -> bool:
    """The pid is alive and its command line names this run directory (pids are reused)."""
    try:
        argv = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError, ValueError):
        return False
    wanted = {str(run_dir).encode(), str(run_dir.resolve()).encode()}
    return any(arg in wanted for arg in argv)


def last_step(path: Path) -> dict | None:
    """The last training record (with a loss) of a metrics.jsonl file, or None."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()  # a bad byte spoils one line
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(record, dict) and "loss" in record and "step" in record:
            return record
    return None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
