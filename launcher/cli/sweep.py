"""`launcher sweep RECIPE key=v1,v2 ...`: a grid of runs on this machine, K at a time.

Every `key=v1,v2` override is an axis; the grid is their product (as `launcher submit --sweep`
makes a Slurm array of it). The sweep owns one directory (run.json of kind `sweep`, locked while
it runs); point i trains in RUN_DIR/task-i, a run directory of its own, through `launcher run`,
so each point gets the launcher's whole behaviour (checkpoints, exact resume, its console).
sweep.json records each point's values and status. Running the same command again runs only the
points that are not done: a stopped point resumes from its checkpoint, a finished one is left
alone. A stop (Ctrl-C, SIGTERM) reaches the running points, which commit a checkpoint.

At the end: `launcher compare`'s table of final and best evaluation metrics, and compare.png.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from launcher.cli.common import ALLOW_HELP, OVERRIDES_HELP, claim_run, recipe_file, refusing
from launcher.config.errors import Problem, RecipeError
from launcher.rundir.layout import SWEEP_RECORD, RunDir

DONE, PENDING, STOPPED, FAILED = "done", "pending", "stopped", "failed"


@click.command(epilog=OVERRIDES_HELP)
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False), callback=recipe_file)
@click.argument("overrides", nargs=-1, metavar="KEY=V1,V2... [KEY=VALUE...]")
@click.option("--nproc", type=click.IntRange(min=1), help="Processes per point (default: cluster.nproc_per_node).")
@click.option("-k", "--parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Points run side by side (their consoles go to RUN_DIR/logs/task-N.log).")
@click.option("--run-dir", help="The sweep's directory; point i runs in RUN_DIR/task-i.")
@click.option("--allow-schedule-change", is_flag=True, help=ALLOW_HELP)
def sweep(recipe_path, overrides, nproc, parallel, run_dir, allow_schedule_change):
    """Run a grid of points on this machine: each KEY=V1,V2 is an axis, every combination a run
    of its own (RUN_DIR/task-N). The same command again runs only the points not done. Ends with
    the comparison table and RUN_DIR/compare.png. (`launcher submit --sweep` makes a Slurm array.)"""
    loaded, resolved, plan = refusing(lambda: plan_sweep(recipe_path, overrides, nproc, run_dir))
    sys.exit(refusing(lambda: run_sweep(recipe_path, loaded, resolved, plan, nproc, parallel,
                                        allow_schedule_change)))


@dataclass
class SweepPlan:
    root: Path
    fixed: tuple[str, ...]  # overrides every point gets (no secret: these are recorded and shown)
    axes: tuple[str, ...]  # `key=v1,v2` as given
    points: list[tuple[str, ...]]  # per point: its `key=value` overrides
    secrets: dict[str, str] = field(default_factory=dict)  # cluster.env secrets: each point's environment


def split_overrides(overrides: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fixed, axes): a value with a comma is an axis, unless it is a YAML list or mapping, or the
    comma is inside quotes (`data.name='a,b'`: one value)."""
    from launcher.slurm.sbatch import split_values

    fixed, axes = [], []
    for override in overrides:
        _, _, value = override.partition("=")
        is_axis = len(split_values(value)) > 1 and not value.lstrip().startswith(("[", "{"))
        (axes if is_axis else fixed).append(override)
    return tuple(fixed), tuple(axes)


def plan_sweep(recipe_path: str, overrides: tuple[str, ...], nproc: int | None, run_dir: str | None):
    """Every point validated before anything is written (a RecipeError names the failing point)."""
    from launcher.plan.prepare import Placement, prepare
    from launcher.secrets import split_secret_overrides
    from launcher.slurm.sbatch import sweep_tasks

    fixed, axes = split_overrides(overrides)
    if not axes:
        raise RecipeError("launcher sweep", [Problem("overrides", "no axis to sweep",
                                                     "give at least one key=v1,v2 (e.g. optimizer.lr=1e-3,3e-3)")])
    keys = [axis.partition("=")[0] for axis in (*axes, *fixed)]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:  # the later value would win on every point: duplicated points, an axis that is not one
        raise RecipeError("launcher sweep", [Problem(key, "is given more than once: each point would keep only "
                                                          "the last value", f"give {key} once, with all its values "
                                                          "(key=v1,v2,...)") for key in twice])
    secret_axes = [axis for axis in axes if split_secret_overrides([axis])[1]]
    if secret_axes:  # its values would be on the console, in sweep.json, the table and compare.png
        raise RecipeError("launcher sweep", [
            Problem(axis.partition("=")[0], "a secret cannot be a sweep axis: its values would be printed and "
                    "recorded for every point", f"give it once ({axis.partition('=')[0]}=...) or in the "
                    "environment, and sweep over something else") for axis in secret_axes])
    public, secrets = split_secret_overrides(fixed)
    loaded, base_plan, resolved = prepare(recipe_path, fixed, Placement(nproc=nproc, run_dir=run_dir))
    root = Path(base_plan.run_dir)
    points = sweep_tasks(axes)
    for index, point in enumerate(points):
        try:
            prepare(recipe_path, (*fixed, *point), Placement(nproc=nproc, run_dir=str(root / f"task-{index}")))
        except RecipeError as error:
            raise RecipeError(f"{error.source} (sweep point task-{index}: {' '.join(point)})", error.problems) \
                from None
    return loaded, resolved, SweepPlan(root, tuple(public), axes, points, secrets)


def run_sweep(recipe_path: str, loaded, resolved: dict, plan: SweepPlan, nproc: int | None, parallel: int,
              allow_schedule_change: bool) -> int:
    """Claim the sweep's directory, run the points not done yet, then compare them. Exit status:
    0 when every point is done, 128+N after a stop on signal N, 1 when a point failed."""
    claim = claim_run(loaded, str(plan.root), resolved, recipe_path, allow_schedule_change, "sweep")
    try:
        claim.commit("sweep")
        record = _record(plan)
        status = _run_points(recipe_path, plan, record, nproc, parallel)
    finally:
        claim.release()
    _summarize(plan.root)
    return status


def _record(plan: SweepPlan) -> dict:
    """sweep.json: the points and their status, kept from an earlier run of the same grid."""
    path = plan.root / SWEEP_RECORD
    fresh = {"fixed": list(plan.fixed), "axes": list(plan.axes),
             "points": [{"task": f"task-{i}", "values": list(p), "status": PENDING} for i, p in enumerate(plan.points)]}
    if path.exists():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if earlier.get("axes") != fresh["axes"] or earlier.get("fixed") != fresh["fixed"]:
            given = " ".join(earlier.get("fixed", []) + earlier.get("axes", []))
            raise RecipeError(str(path), [Problem("sweep", f"this directory holds the sweep {given}",
                                                  "run that same command to finish it, or give this sweep its "
                                                  "own --run-dir")])
        return earlier
    _write(path, fresh)
    return fresh


def _write(path: Path, record: dict) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


def _run_points(recipe_path: str, plan: SweepPlan, record: dict, nproc: int | None, parallel: int) -> int:
    todo = [p for p in record["points"] if p["status"] != DONE]
    done = len(record["points"]) - len(todo)
    sizes = " x ".join(f"{axis.partition('=')[0]} ({len(_values(axis))})" for axis in plan.axes)
    _say(f"{len(record['points'])} points: {sizes}; {parallel} at a time")
    if done:
        _say(f"{done} of {len(record['points'])} points already done; running the other {len(todo)}")
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    env = _environment(parallel, nproc)
    if plan.secrets:  # each point's launcher reads them from its environment, not from its argv
        from launcher.secrets import secret_overrides_environment

        env.update(secret_overrides_environment(plan.secrets))
    running: dict[str, subprocess.Popen] = {}
    try:
        while (todo or running) and not received:
            while todo and len(running) < parallel:
                point = todo.pop(0)
                running[point["task"]] = _start(recipe_path, plan, point, nproc, parallel, env)
            time.sleep(0.2)
            for task, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[task]
                    _finish(plan, record, task, proc.returncode)
        from launcher.engines.group import signal_group

        for proc in running.values():  # a stop: each point commits a checkpoint and exits
            signal_group(proc, signal.SIGTERM)
        for task, proc in running.items():
            _finish(plan, record, task, proc.wait())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        _say(f"stopped by {signal.Signals(received[0]).name}; run the same command to finish the sweep")
        return 128 + received[0]
    failed = [p["task"] for p in record["points"] if p["status"] == FAILED]
    return 1 if failed else 0


def _values(axis: str) -> list[str]:
    from launcher.slurm.sbatch import split_values

    return split_values(axis.partition("=")[2])


def _environment(parallel: int, nproc: int | None) -> dict[str, str]:
    """Points side by side share this machine's cores (the launcher would give each all of them)."""
    from launcher.engines import threads

    return threads.with_thread_default(os.environ, parallel * (nproc or 1)) if parallel > 1 else dict(os.environ)


def _start(recipe_path: str, plan: SweepPlan, point: dict, nproc: int | None, parallel: int,
           env: dict[str, str]) -> subprocess.Popen:
    task_dir = plan.root / point["task"]
    argv = [sys.executable, "-m", "launcher.cli", "run", recipe_path, *plan.fixed, *point["values"],
            "--run-dir", str(task_dir), *(["--nproc", str(nproc)] if nproc else [])]
    _say(f"{point['task']}: {' '.join(point['values'])}" + (" (resuming)" if task_dir.exists() else ""))
    if parallel == 1:
        return subprocess.Popen(argv, env=env, start_new_session=True)  # its console is the sweep's
    log = plan.root / "logs" / f"{point['task']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:  # side by side, each point's console goes to its own file
        return subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(plan: SweepPlan, record: dict, task: str, returncode: int) -> None:
    from launcher.engines.group import STOP_STATUSES

    status = DONE if returncode == 0 else STOPPED if returncode in STOP_STATUSES else FAILED
    for point in record["points"]:
        if point["task"] == task:
            point["status"], point["exit"] = status, returncode
    _write(plan.root / SWEEP_RECORD, record)
    where = "" if status != FAILED else f"; see {RunDir(plan.root / task).root}"
    _say(f"{task}: {status} (exit status {returncode}){where}")


def _summarize(root: Path) -> None:
    from launcher.cli.compare import expand, plot, table

    runs = expand([root])
    if not runs:
        return
    print(table(runs), end="", flush=True)
    try:
        path = plot(runs, root.name, root / "compare.png")
    except ImportError:
        return  # matplotlib comes with the tracking extra; the table says it all
    _say(f"wrote {path}")


def _say(message: str) -> None:
    print(f"launcher: sweep {message}", file=sys.stderr, flush=True)
