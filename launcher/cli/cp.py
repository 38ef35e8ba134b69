"""`launcher cp NAME DEST`: a shipped recipe file copied to edit; never over an existing file."""

from __future__ import annotations

import click

from launcher.cli.common import fail


@click.command(name="cp")
@click.argument("name", metavar="NAME")
@click.argument("destination", metavar="DEST", type=click.Path())
def copy_recipe(name, destination):
    """Copy the shipped recipe file NAME (see `launcher ls`) to DEST, a file or a directory, to edit
    it. Never overwrites."""
    import difflib
    import os
    import shutil

    from launcher.config.catalog import shipped_recipe, shipped_recipe_names

    source = shipped_recipe(name)
    if source is None:
        names = shipped_recipe_names()
        close = difflib.get_close_matches(name.removesuffix(".yaml"), names, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"one of: {', '.join(names)}"
        fail(ValueError(f"no shipped recipe named `{name}`\n      HINT: {hint}"))
    target = os.path.join(destination, source.name) if os.path.isdir(destination) else destination
    try:
        with open(source, "rb") as reader, open(target, "xb") as writer:  # "x": never clobber an edited copy
            shutil.copyfileobj(reader, writer)
    except FileExistsError:
        fail(ValueError(f"{target}: already exists\n      HINT: give another name, or remove it first"))
    except OSError as error:
        fail(ValueError(f"{target}: cannot write: {error.strerror}\n      HINT: check the directory exists"))
    click.echo(f"wrote {target}; run it with `launcher run {target}`")
