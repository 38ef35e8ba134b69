"""Recipe file + command-line flags -> validated recipe and LaunchPlan (shared by run/plan/validate)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher.catalog import is_shipped
from launcher.config.errors import RecipeError
from launcher.config.load import LoadedRecipe, load_recipe, recipe_to_dict
from launcher.plan.launch import LaunchPlan, build_plan
from launcher.plan.topology import TopologyRequest, resolve_topology
from launcher.rundir import default_run_dir, run_name
from launcher.secrets import redact_env


@dataclass(frozen=True)
class Placement:
    """Where the command line puts the job (each None or empty: the recipe's cluster section decides)."""

    nproc: int | None = None
    nodes: int | None = None
    hostfile: str | None = None
    include: str = ""
    exclude: str = ""
    run_dir: str | None = None


def prepare(recipe_path: str, overrides: tuple[str, ...], placement: Placement = Placement(),
            environ: Mapping[str, str] | None = None) -> tuple[LoadedRecipe, LaunchPlan, dict]:
    """Raises RecipeError listing every problem; starts nothing."""
    loaded = load_recipe(recipe_path, overrides)
    recipe = loaded.recipe
    cluster = recipe.cluster
    try:
        request = TopologyRequest(placement.nodes or (cluster.nodes if cluster.nodes != 1 else None),
                                  placement.nproc or cluster.nproc_per_node,
                                  placement.hostfile or cluster.hostfile or None, placement.include, placement.exclude,
                                  cluster.remote_shell)
        topology = resolve_topology(request, environ)
    except ValueError as exc:
        raise RecipeError(recipe_path, exc.args[0]) from None
    name = run_name(recipe.name, recipe_path, is_shipped(recipe_path))
    directory = placement.run_dir or default_run_dir(recipe.output_dir, name)
    plan = build_plan(loaded, topology, str(Path(directory).absolute()), sys.executable,
                      os.environ if environ is None else environ, os.getcwd())
    resolved = recipe_to_dict(recipe)
    resolved["cluster"]["env"] = redact_env(resolved["cluster"]["env"])
    return loaded, plan, resolved
