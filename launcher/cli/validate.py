"""`launcher validate RECIPE...`: the schema and the batch arithmetic of each recipe for its own
cluster; exit 2 on any problem."""

from __future__ import annotations

import sys

import click

from launcher.cli.common import recipe_file
from launcher.config.errors import EXIT_BAD_INPUT


@click.command()
@click.argument("recipe_paths", nargs=-1, required=True, metavar="RECIPE...", type=click.Path(dir_okay=False),
                callback=recipe_file)
def validate(recipe_paths):
    """Check recipe files (schema, batch arithmetic for their cluster); exit 2 on any problem."""
    from launcher.config.errors import RecipeError
    from launcher.plan.deepspeed import precision_problems, schema_problems
    from launcher.plan.prepare import prepare

    failed, prepared = 0, []
    for path in recipe_paths:
        try:
            # The whole planning pipeline, so batch arithmetic and hostfiles are checked too.
            loaded, launch_plan, _ = prepare(path, ())
            prepared.append((path, loaded, launch_plan))
        except RecipeError as error:
            failed += 1
            click.echo(f"error: {error}", err=True)
    # DeepSpeed's schema over every DeepSpeed config at once (one DeepSpeed import, not one a file).
    verdicts = schema_problems([(loaded, launch_plan.math) for _, loaded, launch_plan in prepared])
    for (path, loaded, launch_plan), schema in zip(prepared, verdicts, strict=True):
        problems = precision_problems(loaded, launch_plan) + schema
        if problems:
            failed += 1
            click.echo(f"error: {RecipeError(path, problems)}", err=True)
        else:
            click.echo(f"ok: {path}")
    if failed:
        sys.exit(EXIT_BAD_INPUT)
