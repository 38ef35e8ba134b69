"""`launcher convert FILE`: an accelerate config file (YAML) or a DeepSpeed config (JSON) as the recipe
keys it means, to paste into a recipe; what has no equivalent is listed with the reason.

The same mapping runs when a recipe names the file itself (`backend.accelerate_config`,
`backend.deepspeed_config`): converting shows it ahead, and lets the file go.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from launcher.config.errors import EXIT_BAD_INPUT


@click.command()
@click.argument("config_file", metavar="FILE", type=click.Path(dir_okay=False))
def convert(config_file):
    """Print an accelerate config file (.yaml) or a DeepSpeed config (.json) as recipe keys; exit 2
    when a key cannot be mapped (each one named, with the reason)."""
    import yaml

    from launcher.config.accelerate_import import import_accelerate
    from launcher.config.deepspeed_import import import_deepspeed

    path = Path(config_file).resolve()
    where: dict[str, str] = {}
    if path.suffix == ".json":
        raw: dict = {"backend": {"name": "deepspeed", "deepspeed_config": str(path)}}
        taken, problems = import_deepspeed(raw, path.parent, where)
        ignored: list[str] = []
    else:
        raw = {"backend": {"accelerate_config": str(path)}}
        taken, ignored, problems = import_accelerate(raw, path.parent, where)
        more_taken, more_problems = import_deepspeed(raw, path.parent, where)
        taken, problems = taken + more_taken, problems + more_problems
    raw["backend"].pop("accelerate_config", None)
    if not raw["backend"]:
        del raw["backend"]
    if taken or ignored or not problems:  # a file that could not be read at all maps to nothing
        click.echo(f"# {path} as recipe keys (launcher convert)")
        for entry in taken:
            click.echo(f"#   {entry.render()}")
        click.echo(yaml.safe_dump(raw, sort_keys=False, default_flow_style=False).rstrip())
        for line in ignored:
            click.echo(f"# not mapped: {line}")
    if problems:
        count = len(problems)
        click.echo(f"error: {path}: {count} key{'s' if count != 1 else ''} cannot run here", err=True)
        for problem in problems:
            click.echo("  " + problem.render().replace("\n", "\n  "), err=True)
        sys.exit(EXIT_BAD_INPUT)
