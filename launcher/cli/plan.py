"""`launcher plan RECIPE`: the resolved recipe, the batch arithmetic and every command; starts nothing
and imports no torch."""

from __future__ import annotations

import click

from launcher.cli.common import OVERRIDES_HELP, prepare_or_fail, refusing, resume_sentence, with_placement


@click.command(epilog=OVERRIDES_HELP)
@with_placement
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(recipe_path, overrides, as_json, **placement):
    """Print the resolved recipe, the batch arithmetic and every command; start nothing."""

    import yaml

    from launcher.plan.deepspeed import check_before_start
    from launcher.plan.launch import render_plan
    from launcher.rundir.record import plan_json

    loaded, launch_plan, resolved = prepare_or_fail(recipe_path, overrides, placement)
    refusing(lambda: check_before_start(recipe_path, loaded, launch_plan))
    resume = resume_sentence(loaded, launch_plan)
    if as_json:
        data = {"recipe": resolved, "plan": launch_plan.to_dict()}
        if resume:
            data["resume"] = resume
        if loaded.taken:
            data["taken"] = [{"key": t.key, "value": t.value, "source": t.source} for t in loaded.taken]
        click.echo(plan_json(data), nl=False)
    else:
        click.echo(render_plan(launch_plan, yaml.safe_dump(resolved, sort_keys=False), loaded.taken, resume), nl=False)
