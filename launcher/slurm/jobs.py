"""Talking to Slurm: submit, status, logs, cancel, requeue. Every call is an argv list.

The job ids a run directory was submitted as are kept in its slurm/jobs.json, so
`launcher status|logs|cancel RUN_DIR` need no job id (a job id works too).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from launcher.rundir.layout import SWEEP_TASK, RunDir

# Job states in which the job may still produce output.
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"})


class SlurmError(RuntimeError):
    pass


def _run(argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL, env=env)
    except FileNotFoundError:
        raise SlurmError(f"`{argv[0]}` is not installed here: run this on a Slurm login node") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(argv[:2])}` did not answer in {timeout:.0f} s: is slurmctld up?") from None


def submit(script: Path, run_dir: Path, array_tasks: int = 0, secret_env: dict[str, str] | None = None) -> str:
    """sbatch the script; the job id is recorded in run_dir (with array_tasks, the array's size:
    task i runs in run_dir/task-<i>). secret_env: variables the job inherits from sbatch's
    environment (sbatch exports it by default), so no secret is written into a file."""
    env = {**os.environ, **secret_env} if secret_env else None
    done = _run(["sbatch", "--parsable", str(script)], env=env)
    if done.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {done.stderr.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    if not re.fullmatch(r"\d+", job_id):
        raise SlurmError(f"sbatch printed no job id: {done.stdout!r}")
    jobs = submitted_jobs(run_dir)
    jobs.append({"job_id": job_id, "script": str(script), "submitted": datetime.now(timezone.utc).isoformat(),
                 "array_tasks": array_tasks})
    path = RunDir(run_dir).jobs
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jobs, indent=2) + "\n", encoding="utf-8")
    return job_id


def submitted_jobs(run_dir: Path) -> list[dict]:
    path = RunDir(run_dir).jobs
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def resolve_job(target: str) -> tuple[str, Path | None]:
    """A job id, or a run directory whose last submitted job is meant. A sweep's task directory
    (RUN_DIR/task-<i>) means that one array task: JOBID_<i>."""
    if re.fullmatch(r"\d+(_\d+)?", target):
        return target, None
    run_dir = Path(target)
    jobs = submitted_jobs(run_dir)
    if jobs:
        return jobs[-1]["job_id"], run_dir
    task = SWEEP_TASK.fullmatch(run_dir.name)
    parent = submitted_jobs(run_dir.parent)[-1:] if task else []
    if parent and int(task.group(1)) < parent[0].get("array_tasks", 0):
        return f"{parent[0]['job_id']}_{task.group(1)}", run_dir
    if not run_dir.is_dir():
        raise SlurmError(f"{target}: {'no such directory' if not run_dir.exists() else 'a file'}, not a run "
                         "directory or a Slurm job id\n      HINT: give a run directory (`launcher ls` lists the "
                         "shipped recipes; runs are under output_dir) or a job id")
    raise SlurmError(f"{target}: no job was submitted from this run directory (no {RunDir(run_dir).jobs})")


def job_state(job_id: str) -> dict[str, str]:
    """Fields of `scontrol show job` (JobState, NodeList, RunTime, TimeLimit, Restarts, ...)."""
    done = _run(["scontrol", "show", "job", "--oneliner", job_id])
    if done.returncode != 0:
        return {}
    states = []
    for line in done.stdout.splitlines():  # an array job has one line per task
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields:
            states.append(fields)
    if not states:
        return {}
    if len(states) == 1:
        return states[0]
    merged = dict(states[0])
    merged["JobState"] = ",".join(sorted({s.get("JobState", "?") for s in states}))
    return merged


def cancel(job_id: str) -> None:
    done = _run(["scancel", job_id])
    if done.returncode != 0:
        raise SlurmError(f"scancel failed: {done.stderr.strip()}")


def requeue(job_id: str) -> None:
    done = _run(["scontrol", "requeue", job_id])
    if done.returncode != 0:
        raise SlurmError(f"scontrol requeue {job_id} failed: {done.stderr.strip()}")


def time_left_s(job_id: str) -> float | None:
    """Seconds until the job's time limit (None: unlimited or unknown)."""
    done = _run(["squeue", "-h", "-j", job_id, "-o", "%L"])
    return parse_slurm_duration(done.stdout.strip()) if done.returncode == 0 else None


def parse_slurm_duration(text: str) -> float | None:
    """`1-02:03:04`, `02:03:04`, `03:04`, `5` (minutes, as sbatch reads it) -> seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if match:
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    return float(int(text) * 60) if text.isdigit() else None


def log_files(job_id: str, run_dir: Path | None) -> list[Path]:
    state = job_state(job_id)
    named = state.get("StdOut")
    if named and "%" not in named and Path(named).exists():
        return [Path(named)]
    if run_dir is None:
        return []
    if "_" in job_id:  # one array task: its own %A_%a file, in the array's run directory
        folder = RunDir(run_dir if RunDir(run_dir).jobs.exists() else run_dir.parent).slurm
        return sorted(folder.glob(f"{job_id}.out"))
    folder = RunDir(run_dir).slurm  # the job's file, or every task's of its array (not job 123's for 12)
    return sorted([*folder.glob(f"{job_id}.out"), *folder.glob(f"{job_id}_*.out")])


def partition_gpu_types(partition: str) -> list[str]:
    """The GPU types the partition's nodes offer (`gpu:a100:8` -> a100), from sinfo; [] when it
    names none or sinfo cannot answer (the memory check then asks for --device-memory)."""
    answer = _sinfo_column(partition, "%G")
    return gpu_types_of_gres(answer) if answer is not None else []


def partition_node_memory(partition: str) -> int | None:
    """Bytes of the smallest node's memory in the partition (sinfo's %m, in MB), or None when
    sinfo cannot say."""
    answer = _sinfo_column(partition, "%m")
    sizes = [int(word.rstrip("+")) for word in (answer or "").split() if word.rstrip("+").isdigit()]
    return min(sizes) * 1024**2 if sizes and min(sizes) > 1 else None


def _sinfo_column(partition: str, field: str) -> str | None:
    """sinfo's column `field` (%G, %m) for the partition's nodes, or None when sinfo cannot answer."""
    argv = ["sinfo", "--noheader", f"--format={field}", *(["--partition", partition] if partition else [])]
    try:
        done = _run(argv, timeout=20)
    except SlurmError:
        return None
    return done.stdout if done.returncode == 0 else None


def gpu_types_of_gres(text: str) -> list[str]:
    """`gpu:a100:8(S:0-1),gpu:h100:4` -> ["a100", "h100"]; untyped `gpu:8` names none."""
    found = []
    for item in re.split(r"[,\s]+", text):
        parts = item.split("(")[0].split(":")
        if len(parts) >= 3 and parts[0] == "gpu" and parts[1].lower() not in found:
            found.append(parts[1].lower())
    return found
