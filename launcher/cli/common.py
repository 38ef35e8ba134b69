"""What the verbs share: the recipe argument and placement options, planning a recipe, and the
one way a problem the user can fix becomes `error: ...` with exit status 2.

Light on purpose: every verb module imports this at `launcher --help`, so anything heavier than
click and the standard library is imported inside the function that needs it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NoReturn

import click

from launcher.config.errors import EXIT_BAD_INPUT

STARTED_AT = time.time()  # launch time (`launcher run` to the first optimizer step) counts from here

OVERRIDES_HELP = "Overrides: `section.key=value` sets a key, `~section.key` deletes it."
ALLOW_HELP = "Continue a run whose train.steps, optimizer or scheduler values changed (recorded in run.json)."


def fail(error: Exception) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def say(message: str) -> None:
    print(f"launcher: {message}", file=sys.stderr, flush=True)


def prepare_or_fail(recipe_path: str, overrides: tuple[str, ...], placement: dict):
    """Recipe + flags -> (loaded recipe, plan, resolved dict). Exits 2 on bad input."""
    from launcher.config.errors import RecipeError
    from launcher.plan.prepare import Placement, prepare
    from launcher.secrets import take_secret_overrides

    overrides = (*overrides, *take_secret_overrides(os.environ))  # from `launcher sweep`, never in argv
    master_addr = placement.pop("master_addr", None)
    if master_addr:  # a recipe key like any other: recorded in recipe.yaml, checked by the schema
        import json  # as a YAML string: `[::1]` is an address, not a list

        overrides = (*overrides, f"cluster.master_addr={json.dumps(master_addr)}")
    try:
        return prepare(recipe_path, overrides, Placement(**placement))
    except RecipeError as error:
        fail(error)


def recipe_file(ctx, param, value):
    """Click callback: a shipped recipe's name (`mlp-tiny`) means its file (launcher.config.catalog)."""
    from launcher.config.catalog import resolve_recipe_file

    if isinstance(value, tuple):
        return tuple(resolve_recipe_file(v) for v in value)
    return resolve_recipe_file(value)


def recipe_argument(func):
    """RECIPE and its overrides, the two positional arguments of every verb that plans a recipe."""
    func = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE | ~KEY]...")(func)
    return click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False),
                          callback=recipe_file)(func)


_PLACEMENT = [
    click.option("--nproc", type=click.IntRange(min=1), help="Processes per node (default: cluster.nproc_per_node)."),
    click.option("--nodes", type=click.IntRange(min=1), help="Number of nodes (default: cluster.nodes)."),
    click.option("--hostfile", type=click.Path(dir_okay=False), help="DeepSpeed-style hostfile: `host slots=N` lines."),
    click.option("--include", default="", help="Hostfile filter, DeepSpeed syntax: `host1:0,1@host2` keeps these."),
    click.option("--exclude", default="", help="Hostfile filter, DeepSpeed syntax: `host1:0@host3` drops these."),
    click.option("--run-dir", help="Run directory (default: <output_dir>/<name>; reused to resume)."),
    click.option("--master-addr", help="Rendezvous host the nodes dial (default: the first node's name; "
                                       "cluster.master_addr)."),
    click.option("--node-rank", type=click.IntRange(min=0),
                 help="Run this machine's node only, when something else starts each node (pods, a VM group): "
                      "0 on the rendezvous host (--master-addr), with --nodes N."),
]


def with_placement(func):
    """RECIPE, overrides and the placement options (`run` and `plan`)."""
    for decorator in reversed(_PLACEMENT):
        func = decorator(func)
    return recipe_argument(func)


def refusing(action):
    """action(), with the problems a user can fix (a recipe, a run directory, a checkpoint, a host
    that fails pre-flight) turned into `error: ...` and exit 2: nothing was started."""
    from launcher.config.errors import RecipeError
    from launcher.engines.commands import PreflightFailed
    from launcher.rundir.checkpoints import CheckpointError
    from launcher.rundir.claim import RunDirError

    try:
        return action()
    except (RecipeError, RunDirError, CheckpointError, PreflightFailed) as error:
        fail(error)


def resume_sentence(loaded, launch_plan) -> str:
    """What the run will do with its run directory's checkpoint, in the plan's words: "" for a fresh
    start, "refused: ..." when the run would refuse it (read only; no checksums)."""
    from launcher.rundir import RunDir
    from launcher.rundir.checkpoints import CheckpointError, resume_point, trained_step

    checkpoint, run = loaded.recipe.checkpoint, RunDir(launch_plan.run_dir)
    try:
        point = resume_point(run, checkpoint.dir, checkpoint.resume, loaded.recipe.train.steps,
                             trained_step(run, [checkpoint.dir]))
    except CheckpointError as error:
        return f"refused: {str(error).splitlines()[0]}"
    return point.sentence(launch_plan.math.world_size) if point else ""


def claim_run(loaded, run_dir: str, resolved: dict, recipe_path: str, allow_schedule_change: bool,
              kind: str = "run"):
    """The run directory locked for this experiment (`run`, `submit`, `sweep`); raises RunDirError or
    CheckpointError, with nothing written."""
    from pathlib import Path

    from launcher.rundir import RunDir
    from launcher.rundir.checkpoints import resume_point, trained_step
    from launcher.rundir.claim import check_checkpoint_owner, check_run_dir, claim_run_dir, read_record
    from launcher.rundir.identity import Identity

    run = RunDir(run_dir)
    identity = Identity.of(resolved, getattr(loaded.recipe_module, "IDENTITY_EXEMPT", ()))
    record = read_record(run) or {}
    earlier = record.get("recipe_file")
    if earlier and earlier != str(Path(recipe_path).resolve()) and not Path(earlier).exists():
        say(f"continuing {run.root}: its recipe was {earlier}, now {Path(recipe_path).resolve()} (moved)")
    checkpoint = loaded.recipe.checkpoint
    recorded_dir = (record.get("fixed") or {}).get("checkpoint.dir", checkpoint.dir)
    trained = trained_step(run, [recorded_dir, checkpoint.dir])
    check_run_dir(run, identity, trained, allow_schedule_change, kind)  # whose it is, before anything else
    if kind == "run":  # its checkpoints can be resumed, and are its own
        check_checkpoint_owner(run, run.checkpoints(checkpoint.dir), identity)
        resume_point(run, checkpoint.dir, checkpoint.resume, loaded.recipe.train.steps, trained)
    claim = claim_run_dir(run, identity, str(Path(recipe_path).resolve()), trained, allow_schedule_change, kind)
    if kind == "run":
        claim.checkpoint_root = run.checkpoints(checkpoint.dir)
    return claim


def memory_verdict(recipe_path, overrides, loaded, launch_plan, device_memory, **where):
    """The memory estimate (launcher/plan/memory.py), with a size that does not parse as an error
    the user can fix (exit 2)."""
    from launcher.config.errors import Problem, RecipeError
    from launcher.plan.memory import check, parse_size

    try:  # only the size: any other error is ours, not a flag to fix
        parse_size(device_memory) if device_memory else None
    except ValueError as error:
        raise RecipeError(recipe_path, [Problem("", str(error), "e.g. --device-memory 80GiB", "--device-memory")]) \
            from None
    return check(recipe_path, overrides, loaded, launch_plan, device_memory, **where)


def refuse_if_it_does_not_fit(recipe_path, overrides, loaded, launch_plan, device_memory, **where) -> None:
    """Raise the RecipeError that `run` and `submit` exit 2 with, before anything is written, when
    the estimate exceeds the device."""
    from launcher.plan.memory import refusal

    verdict = memory_verdict(recipe_path, overrides, loaded, launch_plan, device_memory, **where)
    if not verdict.fits:
        raise refusal(recipe_path, loaded, verdict)
