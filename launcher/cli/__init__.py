"""The `launcher` command. One module per verb in this package, named after it (run.py is `launcher
run`); this one only gathers them. Keep the verbs light: --help, `plan` and `validate` never import
torch (the import contracts in pyproject.toml say so, and CI checks them).
"""

from __future__ import annotations

import click

from launcher.cli.cancel import cancel
from launcher.cli.compare import compare
from launcher.cli.convert import convert
from launcher.cli.cp import copy_recipe
from launcher.cli.logs import logs
from launcher.cli.ls import list_recipes
from launcher.cli.plan import plan
from launcher.cli.report import report
from launcher.cli.run import run
from launcher.cli.status import status
from launcher.cli.submit import submit
from launcher.cli.sweep import sweep
from launcher.cli.validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="launcher")
def main() -> None:
    """Turn one recipe file into a distributed training job.

    \b
    launcher ls                                   built-in recipes
    launcher cp mlp-tiny my.yaml                  copy a shipped recipe file to edit
    launcher validate recipes/mlp-tiny.yaml       check a recipe (all errors at once)
    launcher plan recipes/mlp-tiny.yaml --nproc 2 show what would run, start nothing
    launcher convert accelerate.yaml              an accelerate or DeepSpeed config as recipe keys
    launcher run recipes/mlp-tiny.yaml --nproc 2 optimizer.lr=3e-3
    """


for _command in (plan, run, submit, status, logs, report, sweep, compare, cancel, validate, list_recipes,
                 copy_recipe, convert):
    main.add_command(_command)
