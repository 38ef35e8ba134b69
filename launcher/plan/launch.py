"""The LaunchPlan: every process we will start, as data. Built here, executed in engines/."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass

from launcher.config.errors import Problem, RecipeError
from launcher.config.load import LoadedRecipe
from launcher.plan.batch import BatchMath, batch_math
from launcher.plan.topology import Topology
from launcher.secrets import redact_env

WORKER_MODULE = "launcher.runtime.worker"


@dataclass(frozen=True)
class NodeCommand:
    host: str
    argv: tuple[str, ...]  # what runs on that host (torchrun ...)
    env: dict[str, str]  # set on top of the inherited environment
    via: tuple[str, ...] = ()  # remote-shell prefix (ssh ...), empty for the local node

    def full_argv(self) -> list[str]:
        if not self.via:
            return list(self.argv)
        exports = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        remote = " ".join(["env", *exports, *map(shlex.quote, self.argv)])
        return [*self.via, remote]


@dataclass(frozen=True)
class LaunchPlan:
    run_dir: str
    engine: str
    nodes: tuple[NodeCommand, ...]
    nproc_per_node: int
    rendezvous: str
    math: BatchMath

    def to_dict(self, redact: bool = True) -> dict:
        data = asdict(self)
        data["nodes"] = [
            {"host": n.host, "argv": list(n.argv), "env": redact_env(n.env) if redact else dict(n.env),
             "via": list(n.via)}
            for n in self.nodes
        ]
        return data


def build_plan(loaded: LoadedRecipe, topology: Topology, run_dir: str, python: str) -> LaunchPlan:
    recipe = loaded.recipe
    tokens = getattr(loaded.module, "tokens_per_sample", None)
    try:
        math = batch_math(recipe.batch.global_, recipe.batch.micro, topology.world_size, topology.nodes,
                          topology.nproc_per_node, recipe.train.steps, recipe.scheduler.warmup_steps,
                          tokens(recipe) if tokens else None)
    except ValueError as exc:
        problem: Problem = exc.args[0]
        raise RecipeError(loaded.source, [problem]) from None
    env = {"LAUNCHER_RUN_DIR": run_dir, "PYTHONUNBUFFERED": "1", **recipe.cluster.env}
    master = topology.hosts[0]
    rendezvous = "standalone" if topology.nodes == 1 else f"c10d://{master}:{recipe.cluster.master_port}"
    nodes = []
    for host in topology.hosts:
        argv = torchrun_argv(python, topology, recipe.cluster.max_restarts, recipe.cluster.rdzv_timeout,
                             master, recipe.cluster.master_port, run_dir)
        via = () if topology.engine == "torchrun" else ssh_prefix(host)
        nodes.append(NodeCommand(host, tuple(argv), env, via))
    return LaunchPlan(run_dir, topology.engine, tuple(nodes), topology.nproc_per_node, rendezvous, math)


def torchrun_argv(python: str, topology: Topology, max_restarts: int, rdzv_timeout: int,
                  master: str, port: int, run_dir: str) -> list[str]:
    argv = [python, "-m", "torch.distributed.run"]
    if topology.nodes == 1:
        # --standalone picks a free port itself: two local jobs never collide.
        argv += ["--standalone", "--nnodes=1"]
    else:
        # c10d rendezvous assigns node ranks itself, so every node runs the same command.
        argv += [f"--nnodes={topology.nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={master}:{port}",
                 f"--rdzv-id={_rdzv_id(run_dir)}", f"--rdzv-conf=join_timeout={rdzv_timeout}"]
    argv += [
        f"--nproc-per-node={topology.nproc_per_node}",
        f"--max-restarts={max_restarts}",
        # Per-rank stdout/stderr files under the run directory; console shows local rank 0 only.
        f"--log-dir={run_dir}/logs/torchrun",
        "--tee=3",
        "--local-ranks-filter=0",
        "--log-line-prefix-template=[rank${rank}]: ",
        "-m", WORKER_MODULE, "--run-dir", run_dir,
    ]
    return argv


def ssh_prefix(host: str) -> tuple[str, ...]:
    # `--` ends ssh's options: a host named like `-oProxyCommand=...` can never become one.
    return ("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "--", host)


def _rdzv_id(run_dir: str) -> str:
    import hashlib

    return hashlib.sha1(run_dir.encode()).hexdigest()[:12]


def render_plan(plan: LaunchPlan, resolved_yaml: str) -> str:
    lines = ["# resolved recipe", resolved_yaml.rstrip(), "", "# batch arithmetic"]
    rows = plan.math.rows()
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += ["", f"# launch: engine={plan.engine}, {len(plan.nodes)} node(s) x {plan.nproc_per_node} "
              f"process(es), rendezvous {plan.rendezvous}", f"# run dir: {plan.run_dir}"]
    for index, node in enumerate(plan.nodes):
        lines.append(f"node {index} ({node.host}):")
        for key, value in redact_env(node.env).items():
            lines.append(f"  env  {key}={shlex.quote(value)}")
        lines.append("  argv " + shlex.join(node.full_argv() if not node.via else [*node.via, "<remote>"]))
        if node.via:
            lines.append("  remote " + shlex.join(node.argv))
    return "\n".join(lines) + "\n"
