"""`launcher logs RUN_DIR|JOB_ID`: a submitted job's Slurm output (-f follows it); for a run started
with `launcher run`, one rank's own output, every attempt in order, from the files torchrun writes
under logs/torchrun/ (they always keep everything, whatever the console showed).

torchrun's layout: logs/torchrun/<rendezvous id>_<random>/attempt_<n>/<local rank>/{stdout,stderr}.log,
one <rendezvous id>_<random> per launch (a resume is a new launch), one attempt_<n> per restart.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from launcher.cli.common import fail
from launcher.rundir.layout import RunDir

_ATTEMPT = re.compile(r"attempt_(\d+)")


@click.command()
@click.argument("target", metavar="RUN_DIR|JOB_ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the Slurm job ends.")
@click.option("--rank", default=0, show_default=True, type=click.IntRange(min=0),
              help="A `launcher run` run: whose log (the node's local rank).")
@click.option("--host", default="", help="A `launcher run` run on several nodes: that node's logs only.")
def logs(target, follow, rank, host):
    """Print the Slurm output of a submitted job; for a run started with `launcher run`, one
    rank's own log files (every launch and restart, oldest first)."""
    import time

    from launcher.cli.status import is_run_dir
    from launcher.slurm import jobs

    try:
        job_id, run_dir = jobs.resolve_job(target)
    except jobs.SlurmError as error:
        if not is_run_dir(Path(target)):
            fail(error)
        print_rank_logs(Path(target), rank, host)
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


def print_rank_logs(run_dir: Path, rank: int, host: str = "") -> None:
    files = rank_log_files(run_dir, rank)
    hosts = _launch_hosts(run_dir)
    if host:
        files = [(title, path) for title, path in files if hosts.get(_launch_of(path)) == host]
    if not files:
        fail(ValueError(_no_log(run_dir, rank, host, hosts)))
    for title, path in files:
        where = hosts.get(_launch_of(path))
        click.echo(f"==> {title}{f' on {where}' if where else ''} ({path}) <==")
        click.echo(path.read_text(encoding="utf-8", errors="replace"), nl=False)


def _no_log(run_dir: Path, rank: int, host: str, hosts: dict[Path, str]) -> str:
    """Why there is nothing to print, in the run's own terms."""
    from launcher.engines.failure import rank_records

    local_ranks = sorted({int(r.get("local_rank", 0)) for r in rank_records(run_dir)})
    if host and host not in hosts.values():
        known = ", ".join(sorted(set(hosts.values()))) or "none recorded"
        return f"{run_dir}: no node {host} in this run (its nodes: {known})\n      HINT: --host NAME of one of them"
    if local_ranks and rank > max(local_ranks):
        return (f"{run_dir}: no local rank {rank} on any node (this run's nodes have local ranks "
                f"0-{max(local_ranks)})\n      HINT: --rank N of one of them")
    written = any((p / str(rank)).is_dir() for p in RunDir(run_dir).torchrun_logs.glob("*/attempt_*"))
    if written:
        return (f"{run_dir}: rank {rank} wrote nothing to its logs (its stdout.log and stderr.log are empty)\n"
                "      HINT: ranks other than 0 print only warnings and errors; `launcher status` says how the run is")
    return (f"{run_dir}: no log of rank {rank} yet (logs/torchrun/)\n"
            "      HINT: a run that never started its ranks has none; see `launcher status`")


def _launch_of(path: Path) -> Path:
    return path.parent.parent.parent  # <launch>/attempt_<n>/<local rank>/<stream>.log


def _launch_hosts(run_dir: Path) -> dict[Path, str]:
    """The node that wrote each launch directory of the current job (from its rank records): on
    several nodes, each node's torchrun writes a launch directory of its own."""
    from launcher.engines.failure import rank_records

    out = {}
    for record in rank_records(run_dir):
        log_dir = record.get("log_dir")
        if log_dir and record.get("host"):
            out[Path(log_dir).parent.parent] = str(record["host"])
    return out


def rank_log_files(run_dir: Path, local_rank: int = 0) -> list[tuple[str, Path]]:
    """(title, path) for each non-empty stdout/stderr log of the rank, oldest launch first."""
    root = RunDir(run_dir).torchrun_logs
    launches = sorted((p for p in root.glob("*") if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))
    out = []
    for number, launch in enumerate(launches, start=1):
        attempts = sorted((p for p in launch.glob("attempt_*") if _ATTEMPT.fullmatch(p.name)),
                          key=lambda p: int(p.name.split("_")[1]))
        for attempt in attempts:
            for stream in ("stdout", "stderr"):
                path = attempt / str(local_rank) / f"{stream}.log"
                if path.is_file() and path.stat().st_size:
                    title = f"launch {number}, {attempt.name.replace('_', ' ')}, rank {local_rank} {stream}"
                    out.append((title, path))
    return out
