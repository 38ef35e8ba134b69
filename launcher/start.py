"""`launcher run` after the plan: take the run directory, write it, run the plan on its engine.

    claim_run(...)   -> the run directory, checked and locked for this experiment (run.json, .lock)
    start_run(...)   -> pre-flight, the run records, the job on its engine, its exit status

Everything the user can fix is raised before anything starts or is written (RecipeError,
RunDirError, CheckpointError, PreflightFailed); the CLI turns these into exit status 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from launcher.config.errors import Problem, RecipeError
from launcher.config.load import LoadedRecipe
from launcher.plan.launch import LaunchPlan
from launcher.rundir.claim import Claim


class PreflightFailed(Exception):
    def __init__(self, problems: list) -> None:
        super().__init__("pre-flight check failed, nothing was started:\n" + "\n".join(f"  {p}" for p in problems))


def claim_run(loaded: LoadedRecipe, run_dir: str, resolved: dict, recipe_path: str, allow_schedule_change: bool,
              kind: str = "run") -> Claim:
    """The run directory locked for this experiment; raises RunDirError or CheckpointError (nothing written)."""
    from launcher.run_status import resume_point, trained_step
    from launcher.rundir import RunDir
    from launcher.rundir.claim import check_run_dir, claim_run_dir, read_record
    from launcher.rundir.identity import Identity

    run = RunDir(run_dir)
    identity = Identity.of(resolved, getattr(loaded.recipe_module, "IDENTITY_EXEMPT", ()))
    record = read_record(run) or {}
    recorded_dir = (record.get("fixed") or {}).get("checkpoint.dir", loaded.recipe.checkpoint.dir)
    trained = trained_step(run, [recorded_dir, loaded.recipe.checkpoint.dir])
    check_run_dir(run, identity, trained, allow_schedule_change, kind)  # whose it is, before anything else
    if kind == "run":
        resume_point(run, loaded.recipe, trained)  # its checkpoints can be resumed
    return claim_run_dir(run, identity, str(Path(recipe_path).resolve()), trained, allow_schedule_change, kind)


def start_run(loaded: LoadedRecipe, launch_plan: LaunchPlan, resolved: dict, claim: Claim, preflight: bool,
              started_at: float) -> int:
    """Run the job in the claimed run directory; its exit status."""
    from launcher.engines.group import STOP_STATUSES
    from launcher.engines.process import execute
    from launcher.engines.registry import engine_named
    from launcher.rundir import RunDir
    from launcher.rundir.record import write_run_dir
    from launcher.tracking import job_run_id

    engine = engine_named(launch_plan.engine)
    problems = engine.preflight(launch_plan, sys.executable, os.getcwd()) if preflight else []
    if problems:
        raise PreflightFailed(problems)
    for change in claim.changes:
        _say(f"continuing with a changed schedule: {change.render()}")
    claim.commit()
    write_run_dir(RunDir(launch_plan.run_dir), resolved, launch_plan.to_dict())
    job_run_id(launch_plan.run_dir)  # one tracker run per job, made before any rank starts
    math = launch_plan.math
    _say(f"run dir {launch_plan.run_dir}")
    _say(f"{launch_plan.engine}, {launch_plan.layout}; "
         f"global batch {math.global_batch} = {math.micro} x {math.accumulation} x {math.world_size}; "
         f"{math.optimizer_steps} steps")
    cluster = loaded.recipe.cluster
    secrets = {name: cluster.env.get(name, os.environ.get(name, "")) for name in launch_plan.secret_names}
    status = execute(launch_plan, secrets, started_at=started_at, keep_fds=(claim.lock_fd,))
    if status in STOP_STATUSES:  # a requested stop (Slurm's preemption signal: a requeue)
        status = engine.after_stop(launch_plan, status, cluster.timeout_requeues)
    elif status != 0:
        report_failure(launch_plan.run_dir, status, cluster.max_restarts, loaded.recipe.tracking)
    _say(f"job finished with exit status {status}")
    return status


def report_failure(run_dir: str, status: int, max_restarts: int, tracking=None) -> None:
    from launcher.alerts import send_failure
    from launcher.engines import failure

    found = failure.summarize(run_dir, status)
    if found is None:
        _say("the job failed before any rank started; see the output above")
        return
    summary = failure.render(found, max_restarts)
    if tracking is not None:
        # Before failure.json (`launcher status` reads a failure newer than the metrics as how the
        # run ended) and before the summary (which stays the console's last lines).
        send_failure(run_dir, tracking, summary, status)
    failure.write(run_dir, found)
    _say(summary.replace("\n", "\nlauncher: "))


def check_deepspeed_passthrough(path: str, recipe, math) -> None:
    """Raw DeepSpeed keys are checked with DeepSpeed itself (this imports torch: `validate`, and
    `run` with backend.deepspeed_config set)."""
    if recipe.backend.name != "deepspeed" or not recipe.backend.deepspeed_config:
        return
    from launcher.backends.deepspeed_backend import deepspeed_config, passthrough_problems

    problems = passthrough_problems(deepspeed_config(recipe, math, "fp32"))
    if problems:
        raise RecipeError(path, [Problem("backend.deepspeed_config", problems[0],
                                         "see https://www.deepspeed.ai/docs/config-json/", path)])


def _say(message: str) -> None:
    print(f"launcher: {message}", file=sys.stderr, flush=True)
