"""`launcher ls`: the built-in recipe modules and the shipped recipe files."""

from __future__ import annotations

import click


@click.command(name="ls")
def list_recipes():
    """List built-in recipe modules and the recipe files shipped with the launcher."""
    from launcher.config.catalog import builtin_modules, shipped_recipe_files

    click.echo("recipe modules (use as `recipe: NAME`):")
    for name, description in builtin_modules():
        click.echo(f"  {name:<20} {description}")
    files = shipped_recipe_files()
    if files:
        click.echo("recipe files (run by name from anywhere, e.g. `launcher run mlp-tiny`, or copy and edit):")
        for path, description in files:
            click.echo(f"  {path.removeprefix('recipes/').removesuffix('.yaml'):<26} {description}")
