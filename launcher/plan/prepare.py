"""Recipe file + command-line flags -> validated recipe and LaunchPlan (shared by run/plan/validate)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher.config.catalog import is_shipped
from launcher.config.errors import Problem, RecipeError
from launcher.config.load import LoadedRecipe, load_recipe, recipe_to_dict
from launcher.plan.deepspeed import batch_from_config
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
    node_rank: int | None = None  # --node-rank: this machine runs one node of the job (engines/node.py)


def prepare(recipe_path: str, overrides: tuple[str, ...], placement: Placement = Placement(),
            environ: Mapping[str, str] | None = None) -> tuple[LoadedRecipe, LaunchPlan, dict]:
    """Raises RecipeError listing every problem; starts nothing."""
    try:
        loaded = load_recipe(recipe_path, overrides)
    except RecipeError as error:
        # One report: the batch arithmetic too, as far as the values it needs are valid.
        error.problems += batch_problems_of_raw(error.raw, placement, environ)
        raise
    recipe = loaded.recipe
    cluster = recipe.cluster
    try:
        request = TopologyRequest(placement.nodes or (cluster.nodes if cluster.nodes != 1 else None),
                                  placement.nproc or cluster.nproc_per_node,
                                  placement.hostfile or cluster.hostfile or None, placement.include, placement.exclude,
                                  cluster.remote_shell, placement.node_rank, cluster.master_addr)
        topology = resolve_topology(request, environ)
    except ValueError as exc:
        raise RecipeError(recipe_path, exc.args[0]) from None
    loaded = batch_from_config(loaded, sum(topology.procs_by_node))
    name = run_name(recipe.name, recipe_path, is_shipped(recipe_path))
    directory = placement.run_dir or default_run_dir(recipe.output_dir, name)
    plan = build_plan(loaded, topology, str(Path(directory).absolute()), sys.executable,
                      os.environ if environ is None else environ, os.getcwd())
    resolved = recipe_to_dict(loaded.recipe)
    resolved["cluster"]["env"] = redact_env(resolved["cluster"]["env"])
    return loaded, plan, resolved


def batch_problems_of_raw(raw: dict | None, placement: Placement, environ: Mapping[str, str] | None) -> list:
    """The batch arithmetic's problem for a recipe that failed validation elsewhere: judged from
    the raw values when batch.global, batch.micro and the placement are themselves valid."""
    from launcher.config.schema import BatchConfig, ClusterConfig
    from launcher.plan.batch import batch_math

    def section(name: str) -> dict:
        value = (raw or {}).get(name)
        return value if isinstance(value, dict) else {}

    batch, cluster = section("batch"), section("cluster")
    global_batch, micro = batch.get("global", BatchConfig.global_), batch.get("micro", BatchConfig.micro)
    nodes = placement.nodes or cluster.get("nodes", ClusterConfig.nodes)
    nproc = placement.nproc or cluster.get("nproc_per_node", ClusterConfig.nproc_per_node)
    hostfile = placement.hostfile or cluster.get("hostfile") or None
    numbers = (global_batch, micro, nodes)
    if not all(type(v) is int and v > 0 for v in numbers) or not isinstance(nproc, (int, str)):
        return []  # the schema's report names these values already
    try:
        topology = resolve_topology(TopologyRequest(nodes if nodes != 1 else None, nproc, hostfile, placement.include,
                                                    placement.exclude, str(cluster.get("remote_shell", "auto"))),
                                    environ)
        batch_math(global_batch, micro, topology.procs_by_node, 1, 0, None)
    except ValueError as exc:  # a Problem from the arithmetic; a list of them from the placement
        problem = exc.args[0]
        return [problem] if isinstance(problem, Problem) else []
    except (TypeError, OSError):  # an unusable placement: its own report, once the recipe is valid
        return []
    return []
