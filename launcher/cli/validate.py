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
    from launcher.plan.deepspeed import check_deepspeed_passthrough
    from launcher.plan.prepare import prepare

    failed = 0
    for path in recipe_paths:
        try:
            # The whole planning pipeline, so batch arithmetic and hostfiles are checked too.
            loaded, launch_plan, _ = prepare(path, ())
            check_deepspeed_passthrough(path, loaded.recipe, launch_plan.math)
            click.echo(f"ok: {path}")
        except RecipeError as error:
            failed += 1
            click.echo(f"error: {error}", err=True)
    if failed:
        sys.exit(EXIT_BAD_INPUT)
