"""The `launcher` command. Keep this module light: --help and `plan` must never import torch."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from launcher.config.errors import EXIT_BAD_INPUT

_OVERRIDES_HELP = "Overrides: `section.key=value` sets a key, `~section.key` deletes it."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="launcher")
def main() -> None:
    """Turn one recipe file into a distributed training job.

    \b
    launcher ls                                   built-in recipes
    launcher validate recipes/mlp-tiny.yaml       check a recipe (all errors at once)
    launcher plan recipes/mlp-tiny.yaml --nproc 2 show what would run, start nothing
    launcher run recipes/mlp-tiny.yaml --nproc 2 optimizer.lr=3e-3
    """


def _fail(error: Exception) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _prepare(recipe_path: str, overrides: tuple[str, ...], nproc: int | None, nodes: int | None,
             hostfile: str | None, run_dir: str | None):
    """Recipe + flags -> (loaded recipe, plan, resolved dict). Exits 2 on bad input."""
    from launcher.config.errors import RecipeError
    from launcher.plan.prepare import prepare

    try:
        return prepare(recipe_path, overrides, nproc, nodes, hostfile, run_dir)
    except RecipeError as error:
        _fail(error)


_common = [
    click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False)),
    click.argument("overrides", nargs=-1, metavar="[KEY=VALUE | ~KEY]..."),
    click.option("--nproc", type=click.IntRange(min=1), help="Processes per node (default: cluster.nproc_per_node)."),
    click.option("--nodes", type=click.IntRange(min=1), help="Number of nodes (default: cluster.nodes)."),
    click.option("--hostfile", type=click.Path(dir_okay=False), help="DeepSpeed-style hostfile: `host slots=N` lines."),
    click.option("--run-dir", help="Run directory (default: <output_dir>/<name>; reused to resume)."),
]


def _with_common(func):
    for decorator in reversed(_common):
        func = decorator(func)
    return func


@main.command(epilog=_OVERRIDES_HELP)
@_with_common
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(recipe_path, overrides, nproc, nodes, hostfile, run_dir, as_json):
    """Print the resolved recipe, the batch arithmetic and every command; start nothing."""
    import json

    import yaml

    from launcher.plan.launch import render_plan

    _, launch_plan, resolved = _prepare(recipe_path, overrides, nproc, nodes, hostfile, run_dir)
    if as_json:
        click.echo(json.dumps({"recipe": resolved, "plan": launch_plan.to_dict()}, indent=2))
    else:
        click.echo(render_plan(launch_plan, yaml.safe_dump(resolved, sort_keys=False)), nl=False)


@main.command(epilog=_OVERRIDES_HELP)
@_with_common
def run(recipe_path, overrides, nproc, nodes, hostfile, run_dir):
    """Write the run directory, then start the job and wait for it (exit status = the job's)."""
    from launcher.engines.process import execute
    from launcher.rundir import write_run_dir
    from launcher.tracking import job_run_id

    _, launch_plan, resolved = _prepare(recipe_path, overrides, nproc, nodes, hostfile, run_dir)
    write_run_dir(launch_plan.run_dir, resolved, launch_plan.to_dict())
    job_run_id(launch_plan.run_dir)  # one tracker run per job, made before any rank starts
    math = launch_plan.math
    click.echo(f"launcher: run dir {launch_plan.run_dir}", err=True)
    click.echo(f"launcher: {launch_plan.engine}, {len(launch_plan.nodes)} node(s) x {launch_plan.nproc_per_node} "
               f"process(es); global batch {math.global_batch} = {math.micro} x {math.accumulation} x "
               f"{math.world_size}; {math.optimizer_steps} steps", err=True)
    status = execute(launch_plan)
    click.echo(f"launcher: job finished with exit status {status}", err=True)
    sys.exit(status)


@main.command()
@click.argument("recipe_paths", nargs=-1, required=True, metavar="RECIPE...", type=click.Path(dir_okay=False))
def validate(recipe_paths):
    """Check recipe files (schema, batch arithmetic for their cluster); exit 2 on any problem."""
    from launcher.config.errors import RecipeError
    from launcher.plan.prepare import prepare

    failed = 0
    for path in recipe_paths:
        try:
            # The whole planning pipeline, so batch arithmetic and hostfiles are checked too.
            loaded, launch_plan, _ = prepare(path, (), None, None, None, None)
            _check_deepspeed_passthrough(path, loaded.recipe, launch_plan.math)
            click.echo(f"ok: {path}")
        except RecipeError as error:
            failed += 1
            click.echo(f"error: {error}", err=True)
    if failed:
        sys.exit(EXIT_BAD_INPUT)


def _check_deepspeed_passthrough(path: str, recipe, math) -> None:
    """Raw DeepSpeed keys are checked with DeepSpeed itself (this imports torch; only validate does)."""
    if recipe.backend.name != "deepspeed" or not recipe.backend.deepspeed_config:
        return
    from launcher.backends.deepspeed_backend import deepspeed_config, passthrough_problems
    from launcher.config.errors import Problem, RecipeError

    problems = passthrough_problems(deepspeed_config(recipe, math, "fp32"))
    if problems:
        raise RecipeError(path, [Problem("backend.deepspeed_config", problems[0],
                                         "see https://www.deepspeed.ai/docs/config-json/", path)])


@main.command(name="ls")
def list_recipes():
    """List built-in recipe modules and the recipe files shipped with the launcher."""
    from launcher.catalog import builtin_modules, shipped_recipe_files

    click.echo("recipe modules (use as `recipe: NAME`):")
    for name, description in builtin_modules():
        click.echo(f"  {name:<20} {description}")
    files = shipped_recipe_files()
    if files:
        click.echo("recipe files:")
        for path, description in files:
            click.echo(f"  {path:<36} {description}")


if __name__ == "__main__":
    main()
