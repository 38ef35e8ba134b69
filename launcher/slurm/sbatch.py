"""The sbatch script for `launcher submit`, as a pure function of a request (golden-file tested).

The script runs `launcher run` once per job, as the batch step, with `exec` so that the launcher
is the batch shell and receives `--signal=B:USR1@lead` itself. Inside the allocation `launcher
run` sees SLURM_* and starts one torchrun per node with srun. The same script is what Slurm
re-runs on requeue, and the run directory is fixed, so a requeued job resumes.

#SBATCH lines are read by sbatch, not by a shell, so no quoting can make a hostile value safe
there: values are validated instead (no whitespace, no control characters). The exec line is
built with shlex.quote.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass, field

from launcher.config.errors import Problem
from launcher.secrets import is_secret_name

SIGNAL_LEAD_S = 120  # Slurm sends USR1 this long before the time limit: time to commit a checkpoint
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.,:@+=/\-\[\]]+$")
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}(:\d{1,2})?|\d+-\d{1,2}(:\d{1,2}){0,2})$")


@dataclass(frozen=True)
class SlurmOptions:
    """What the user asks of Slurm: `launcher submit`'s flags, checked before anything is planned."""

    nodes: int = 1
    nproc_per_node: int | None = None  # passed to `launcher run --nproc` (default: gpus_per_node)
    gpus_per_node: int = 0
    cpus_per_task: int = 0
    time: str = ""
    partition: str = ""
    account: str = ""
    signal_lead_s: int = SIGNAL_LEAD_S
    requeue: bool = True
    sweeps: tuple[str, ...] = ()  # `key=v1,v2,...`: one array task per combination
    extra: tuple[str, ...] = ()  # more `--option=value` lines for #SBATCH
    allow_schedule_change: bool = False  # passed on to `launcher run`
    device_memory: str = ""  # passed on: the job's own memory check then counts the same size
    memory_check: bool = True  # False (--no-memory-check) is passed on too: queued anyway, started anyway

    @property
    def processes_per_node(self) -> int | None:
        """Processes each node starts: --nproc, else one per GPU, else the recipe's (None)."""
        return self.nproc_per_node or self.gpus_per_node or None


@dataclass(frozen=True)
class SbatchRequest:
    """The planned job and the options it is submitted with."""

    job_name: str
    recipe_path: str  # absolute
    run_dir: str  # absolute; array tasks use run_dir/task-<i>
    workdir: str  # absolute; relative paths in the recipe resolve from here
    python: str
    options: SlurmOptions = field(default_factory=SlurmOptions)
    overrides: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)  # exported by the script (never secrets)
    # Secret variables the job gets from the environment sbatch runs in (names only, for the reader).
    secret_names: tuple[str, ...] = ()


def slurm_job_name(run_name: str) -> str:
    """The run's name as Slurm's job name: #SBATCH lines take plain ASCII only."""
    ascii_name = re.sub(r"[^A-Za-z0-9_.+=@-]+", "-", run_name).strip("-")
    return ascii_name or "launcher"


def sweep_tasks(sweeps: tuple[str, ...]) -> list[tuple[str, ...]]:
    """`a=1,2` x `b=x,y` -> [(a=1, b=x), (a=1, b=y), (a=2, b=x), (a=2, b=y)]; a quoted value keeps
    its commas (`name='a,b',c`: two values)."""
    axes = []
    for sweep in sweeps:
        key, _, values = sweep.partition("=")
        axes.append([f"{key}={v}" for v in split_values(values)])
    return [tuple(combo) for combo in itertools.product(*axes)] if axes else []


def split_values(text: str) -> list[str]:
    """A sweep axis's values: split at the commas outside quotes ('...' or "...", as YAML reads them)."""
    values, current, quote = [], [], ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    return values


def check_options(options: SlurmOptions) -> list[Problem]:
    """Every flag that would not survive an #SBATCH line or the array's product."""
    problems = []
    for flag, value, hint in (("--partition", options.partition, "a partition name from `sinfo`"),
                              ("--account", options.account, "an account name from `sacctmgr show assoc`")):
        if value and not _SAFE_VALUE.match(value):
            problems.append(Problem(flag, f"{value!r} cannot go into an #SBATCH line", hint))
    if options.time and not _TIME.match(options.time):
        problems.append(Problem("--time", f"{options.time!r} is not a Slurm time",
                                "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"))
    for option in options.extra:
        name, _, value = option.partition("=")
        if not re.match(r"^--[a-z][a-z-]*$", name) or (value and not _SAFE_VALUE.match(value)):
            problems.append(Problem("--sbatch", f"{option!r} is not a safe sbatch option",
                                    "write --option=value, e.g. --sbatch --qos=high"))
    for sweep in options.sweeps:
        key, sep, values = sweep.partition("=")
        if not sep or not key or not values or any(not v for v in split_values(values)):
            problems.append(Problem("--sweep", f"{sweep!r} is not KEY=V1,V2,...",
                                    "e.g. --sweep optimizer.lr=1e-3,3e-4"))
        elif is_secret_name(key.rsplit(".", 1)[-1]):
            problems.append(Problem("--sweep", f"{key} is a secret: its values would be written into the script",
                                    f"give it once as an override ({key}=...) or in the environment"))
    if options.signal_lead_s < 0:
        problems.append(Problem("--signal-lead", "must be >= 0 seconds", "e.g. 120"))
    return problems


def check_run_dir(run_dir: str) -> list[Problem]:
    """The run directory names the job's output files (#SBATCH --output)."""
    if run_dir and not re.match(r"^[^\s%]+$", run_dir):
        return [Problem("--run-dir", f"{run_dir!r} cannot be a Slurm output path",
                        "use a run directory without spaces, newlines or `%`")]
    return []


def render_sbatch(request: SbatchRequest) -> str:
    options = request.options
    array = sweep_tasks(options.sweeps)  # one array task per combination (sweep_task i: RUN_DIR/task-i)
    log = f"{request.run_dir}/slurm/%A_%a.out" if array else f"{request.run_dir}/slurm/%j.out"
    lines = ["#!/bin/bash",
             f"# Written by `launcher submit` for {request.recipe_path}.",
             "# Slurm re-runs this same script on requeue; the run directory is fixed, so the job resumes.",
             f"#SBATCH --job-name={request.job_name}",
             f"#SBATCH --nodes={options.nodes}",
             "#SBATCH --ntasks-per-node=1"]
    if options.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={options.gpus_per_node}")
    if options.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={options.cpus_per_task}")
    for flag, value in (("time", options.time), ("partition", options.partition), ("account", options.account)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH --output={log}", "#SBATCH --open-mode=append"]
    if options.signal_lead_s:
        # B: only the batch shell (exec'd into `launcher run`) gets it; the launcher relays it.
        lines.append(f"#SBATCH --signal=B:USR1@{options.signal_lead_s}")
    lines.append("#SBATCH --requeue" if options.requeue else "#SBATCH --no-requeue")
    if array:
        lines.append(f"#SBATCH --array=0-{len(array) - 1}")
    lines += [f"#SBATCH {option}" for option in options.extra]
    lines += [""]
    if request.secret_names:
        lines.append("# Secrets reach the job in the environment `launcher submit` gave sbatch, never in this file: "
                     + " ".join(request.secret_names))
    lines += ["set -eu", f"cd {shlex.quote(request.workdir)}",
              f"export LAUNCHER_SLURM_SIGNAL_LEAD={options.signal_lead_s}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in request.environment.items()]
    if not array:
        lines.append(_exec_line(request, request.run_dir, request.overrides))
    else:
        lines.append('case "$SLURM_ARRAY_TASK_ID" in')
        for index, sweep_task in enumerate(array):
            command = _exec_line(request, f"{request.run_dir}/task-{index}", (*request.overrides, *sweep_task))
            lines.append(f"  {index}) {command} ;;")
        lines += ['  *) echo "launcher: unknown array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    return "\n".join(lines) + "\n"


def _exec_line(request: SbatchRequest, run_dir: str, overrides: tuple[str, ...]) -> str:
    options = request.options
    argv = [request.python, "-m", "launcher.cli", "run", request.recipe_path, "--run-dir", run_dir,
            "--nodes", str(options.nodes)]
    if options.processes_per_node:
        argv += ["--nproc", str(options.processes_per_node)]
    if options.allow_schedule_change:
        argv.append("--allow-schedule-change")
    if options.device_memory:
        argv += ["--device-memory", options.device_memory]
    if not options.memory_check:
        argv.append("--no-memory-check")
    # `--` ends the options: an override can never be read as a flag of `launcher run`.
    return "exec " + shlex.join([*argv, "--", *overrides])
