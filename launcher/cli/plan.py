"""`launcher plan RECIPE`: the resolved recipe, the batch arithmetic and every command; starts nothing
and imports no torch."""

from __future__ import annotations

import click

from launcher.cli.common import OVERRIDES_HELP, prepare_or_fail, with_placement


@click.command(epilog=OVERRIDES_HELP)
@with_placement
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(recipe_path, overrides, as_json, **placement):
    """Print the resolved recipe, the batch arithmetic and every command; start nothing."""

    import yaml

    from launcher.plan.launch import render_plan
    from launcher.rundir.record import plan_json

    _, launch_plan, resolved = prepare_or_fail(recipe_path, overrides, placement)
    if as_json:
        click.echo(plan_json({"recipe": resolved, "plan": launch_plan.to_dict()}), nl=False)
    else:
        click.echo(render_plan(launch_plan, yaml.safe_dump(resolved, sort_keys=False)), nl=False)
