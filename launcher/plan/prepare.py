"""Recipe file + command-line flags -> validated recipe and LaunchPlan (shared by run/plan/validate)."""

from __future__ import annotations

import dataclasses
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
    if not placement.run_dir and not Path(directory).exists():  # a moved project finds its runs again
        directory = _moved_run(loaded, name) or directory
    try:
        plan = build_plan(loaded, topology, str(Path(directory).absolute()), sys.executable,
                          os.environ if environ is None else environ, os.getcwd())
    except RecipeError as error:
        error.problems = [_resume_batch_problem(p, loaded, directory, sum(topology.procs_by_node))
                          for p in error.problems]
        raise
    resolved = recipe_to_dict(loaded.recipe)
    resolved["cluster"]["env"] = redact_env(resolved["cluster"]["env"])
    return loaded, plan, resolved


def _moved_run(loaded: LoadedRecipe, name: str) -> str | None:
    from launcher.rundir.identity import Identity
    from launcher.rundir.naming import moved_run_dir

    recipe = loaded.recipe
    if recipe.name:  # a name set in the recipe does not follow the file's path
        return None
    fixed = Identity.of(recipe_to_dict(recipe), getattr(loaded.recipe_module, "IDENTITY_EXEMPT", ())).fixed
    return moved_run_dir(recipe.output_dir, name, fixed)


def _resume_batch_problem(problem: Problem, loaded: LoadedRecipe, directory: str, world_size: int) -> Problem:
    """A batch that does not divide on this world size, for a run directory with a checkpoint: the
    checkpoint keeps batch.global, so the fix is another world size (the ones that work, named) or
    another batch.micro, never another batch.global."""
    from launcher.rundir import RunDir
    from launcher.rundir.checkpoints import CheckpointError, find_resume_dir, read_manifest, resumable_world_sizes

    batch, checkpoint = loaded.recipe.batch, loaded.recipe.checkpoint
    if problem.path != "batch.global" or checkpoint.resume == "never":
        return problem
    try:
        found = find_resume_dir(RunDir(directory).checkpoints(checkpoint.dir), checkpoint.resume)
        meta = read_manifest(found)["meta"] if found else None
    except (CheckpointError, OSError):
        return problem
    if not meta or meta.get("global_batch") != batch.global_:
        return problem
    sizes = resumable_world_sizes(batch.global_, batch.micro)
    micros = [m for m in range(1, batch.global_ // world_size + 1) if batch.global_ % (m * world_size) == 0]
    hint = (f"{found} (step {meta.get('step')}, {meta.get('world_size')} ranks) keeps batch.global="
            f"{batch.global_}: with batch.micro={batch.micro} it resumes on "
            f"{', '.join(map(str, sizes[:12]))}{' ...' if len(sizes) > 12 else ''} processes in all")
    if micros:
        hint += f"; on {world_size}, set batch.micro to one of {micros[-6:]}"
    return dataclasses.replace(problem, hint=hint)


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
