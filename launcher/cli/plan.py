"""`launcher plan RECIPE`: the resolved recipe, the batch arithmetic and every command; starts nothing
and imports no torch."""

from __future__ import annotations

import click

from launcher.cli.common import (
    OVERRIDES_HELP,
    memory_verdict,
    prepare_or_fail,
    refusing,
    resume_sentence,
    with_placement,
)


@click.command(epilog=OVERRIDES_HELP)
@with_placement
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--memory", is_flag=True, help="Also predict each rank's peak memory (traces the model on the "
                                            "meta device in a child process; seconds).")
@click.option("--device-memory", metavar="SIZE", help="Memory of one rank's device, e.g. 80GiB (implies --memory; "
                                                      "default on a CPU: this machine's memory / processes).")
def plan(recipe_path, overrides, as_json, memory, device_memory, **placement):
    """Print the resolved recipe, the batch arithmetic and every command; start nothing."""

    import yaml

    from launcher.plan.deepspeed import check_before_start
    from launcher.plan.launch import render_plan
    from launcher.rundir.record import plan_json

    loaded, launch_plan, resolved = prepare_or_fail(recipe_path, overrides, placement)
    refusing(lambda: check_before_start(recipe_path, loaded, launch_plan))
    resume = resume_sentence(loaded, launch_plan)
    verdict = None
    if memory or device_memory:
        verdict = refusing(lambda: memory_verdict(recipe_path, overrides, loaded, launch_plan, device_memory))
    if as_json:
        data = {"recipe": resolved, "plan": launch_plan.to_dict()}
        if resume:
            data["resume"] = resume
        if loaded.taken:
            data["taken"] = [{"key": t.key, "value": t.value, "source": t.source} for t in loaded.taken]
        if verdict is not None:
            data["memory"] = verdict.data
        click.echo(plan_json(data), nl=False)
    else:
        click.echo(render_plan(launch_plan, yaml.safe_dump(resolved, sort_keys=False), loaded.taken, resume), nl=False)
        if verdict is not None:
            click.echo("\n".join(verdict.lines))
