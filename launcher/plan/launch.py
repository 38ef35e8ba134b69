"""The LaunchPlan: every process we will start, as data. Built here, executed in engines/."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.config.errors import Problem, RecipeError
from launcher.config.load import LoadedRecipe
from launcher.config.schema import ClusterConfig
from launcher.engines import threads
from launcher.engines.base import NodeRequest
from launcher.engines.commands import LocalProcess, NodeCommand
from launcher.engines.registry import engine_named
from launcher.engines.remote import secrets_path
from launcher.plan.batch import BatchMath, batch_math, deepspeed_batch_problems, layout_text
from launcher.plan.topology import Topology
from launcher.rundir.layout import RunDir
from launcher.secrets import redact_env

WORKER_MODULE = "launcher.runtime.worker"
WORKER_SCRIPT = str(Path(__file__).resolve().parent.parent / "runtime" / "worker.py")
DEFAULT_MASTER_PORT = ClusterConfig.master_port


@dataclass(frozen=True)
class LaunchPlan:
    run_dir: str
    engine: str  # the engine's name (launcher.engines.registry)
    nodes: tuple[NodeCommand, ...]
    processes: tuple[LocalProcess, ...]
    procs_by_node: tuple[int, ...]  # processes each node starts, in node order
    rendezvous: str
    math: BatchMath
    # Secret variables (values never in the plan) the remote ranks need; written at launch to a
    # 0600 file that the node guard reads, removed when the job ends.
    secret_names: tuple[str, ...] = ()
    slurm_job_id: str = ""
    node_rank: int | None = None  # this launcher starts one node of the job (engines/node.py)

    @property
    def layout(self) -> str:
        """`2 nodes x 4 processes`, or `2 nodes with 2+1 processes`."""
        return layout_text(self.procs_by_node)

    @property
    def rendezvous_id(self) -> str:
        return _rdzv_id(self.run_dir)

    @property
    def master_addr(self) -> str:
        """The rendezvous host ("" for a single local node)."""
        if "://" not in self.rendezvous:
            return ""
        return self.rendezvous.split("://", 1)[1].rsplit(":", 1)[0]

    @property
    def master_port(self) -> int:
        """The rendezvous port (0 for a single local node: torchrun's --standalone picks one)."""
        return int(self.rendezvous.rsplit(":", 1)[1]) if "://" in self.rendezvous else 0

    @property
    def secrets_file(self) -> str:
        return secrets_path(self.run_dir) if self.secret_names else ""

    def to_dict(self, redact: bool = True) -> dict:
        """Plain data for JSON, field by field (dataclasses.asdict deep-copies every node's argv and
        env first: most of `plan --json`'s time with thousands of hosts)."""
        # Nodes share their command and their environment up to CUDA_VISIBLE_DEVICES: each distinct
        # one is copied (and redacted) once, and the nodes share the copy (plan_json encodes it once).
        envs: dict[int, dict[str, str]] = {}
        argvs: dict[int, list[str]] = {}

        def env(values: dict[str, str]) -> dict[str, str]:
            if id(values) not in envs:
                envs[id(values)] = redact_env(values) if redact else dict(values)
            return envs[id(values)]

        def argv(values: tuple[str, ...]) -> list[str]:
            if id(values) not in argvs:
                argvs[id(values)] = list(values)
            return argvs[id(values)]

        return {"run_dir": self.run_dir, "engine": self.engine,
                "nodes": [{"host": n.host, "argv": argv(n.argv), "env": env(n.env)} for n in self.nodes],
                "processes": [{"argv": list(p.argv), "hosts": list(p.hosts), "env": env(p.env),
                               "keep_stdin": p.keep_stdin} for p in self.processes],
                "procs_by_node": list(self.procs_by_node), "rendezvous": self.rendezvous, "math": asdict(self.math),
                "secret_names": list(self.secret_names), "slurm_job_id": self.slurm_job_id,
                **({"node_rank": self.node_rank} if self.node_rank is not None else {})}


def build_plan(loaded: LoadedRecipe, topology: Topology, run_dir: str, python: str,
               environ: Mapping[str, str], cwd: str) -> LaunchPlan:
    cluster = loaded.recipe.cluster
    math = _batch_math(loaded, topology)
    engine = engine_named(topology.engine)
    standalone = engine.standalone and topology.nodes == 1
    rendezvous = _rendezvous(cluster, topology, run_dir, standalone, "cluster.master_port" in loaded.explicit)
    method = start_method(cluster.start_method, standalone)
    torchrun = TorchrunCommand(python, topology.nodes, rendezvous, cluster.max_restarts, run_dir, method)
    by_nproc = {nproc: tuple(torchrun.argv(nproc)) for nproc in set(topology.procs_by_node)}
    here = topology.nproc_per_node if standalone or topology.node_rank is not None else 0  # ranks on this machine
    env = rank_env(cluster, run_dir, method, environ, here)
    node_of = _first_positions(topology.hosts)  # one pass: a lookup per host, not a search (10,000 hosts)
    nodes_here = [node_of[h] if topology.node_rank is None else topology.node_rank for h in topology.started_here]
    commands = engine.commands(NodeRequest(topology.started_here, tuple(topology.slot_ids[i] for i in nodes_here)
                                           if topology.slot_ids else (),
                                           tuple(by_nproc[topology.procs_by_node[i]] for i in nodes_here), env, environ,
                                           tuple(cluster.forward_env), python, cwd, run_dir))
    return LaunchPlan(run_dir, engine.name, commands.nodes, commands.processes, topology.procs_by_node,
                      rendezvous.endpoint, math, commands.secret_names, topology.slurm_job_id, topology.node_rank)


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes' torchrun agents meet: `--standalone` on one local node (torchrun picks a free
    port itself, so two local jobs never collide), else a c10d store on the master's port."""

    standalone: bool
    master: str = ""
    port: int = 0
    run_id: str = ""  # the rendezvous id: one per run directory
    join_timeout: int = 900
    node_rank: int | None = None  # nodes started one by one: torchrun's static rendezvous, node 0 hosts it

    @property
    def endpoint(self) -> str:
        if self.standalone:
            return "standalone"
        return f"{'static' if self.node_rank is not None else 'c10d'}://{host_port(self.master, self.port)}"


def _rendezvous(cluster: ClusterConfig, topology: Topology, run_dir: str, standalone: bool,
                explicit_port: bool) -> Rendezvous:
    """Where the nodes meet. A port the recipe sets is used as given (one local node too: a c10d
    store there instead of --standalone); the default is derived per job or run directory
    (rendezvous_port)."""
    if standalone and explicit_port:  # one local node on the port the recipe names, not one torchrun picks
        return Rendezvous(False, cluster.master_addr or "localhost", cluster.master_port, _rdzv_id(run_dir),
                          cluster.rdzv_timeout)
    master = cluster.master_addr or topology.hosts[0]
    port = cluster.master_port if explicit_port else rendezvous_port(None, topology.slurm_job_id, _rdzv_id(run_dir))
    if (topology.slurm_job_id and not explicit_port and topology.node_rank is None
            and _is_this_host(topology.hosts[0])):
        # Inside the job, on its first node (where `launcher run` runs and the store will listen):
        # another job whose id ends in the same 4 digits may hold the port on a shared node. (Nodes
        # started one by one each derive the port, so none of them may move it.)
        port = first_free_port(port)
    return Rendezvous(standalone, master, port, _rdzv_id(run_dir), cluster.rdzv_timeout, topology.node_rank)


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 address in brackets (`[::1]:29500`) as torchrun's endpoints want it."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def interface_env(interfaces: str) -> dict[str, str]:
    """cluster.network_interface for NCCL and gloo. NCCL reads prefixes, `^` (exclude) and `=`
    (exact); gloo takes plain names only, so an exclusion list is NCCL's alone."""
    if not interfaces:
        return {}
    env = {"NCCL_SOCKET_IFNAME": interfaces}
    if interfaces[0] not in "^=":
        env["GLOO_SOCKET_IFNAME"] = interfaces
    return env


def start_method(configured: str, one_local_node: bool) -> str:
    """How torchrun starts the ranks. `auto` forks them from its agent (torch and torch._dynamo
    imported once: seconds less to the first step) on a single node of this machine without a
    GPU, and spawns fresh interpreters elsewhere: forking beside CUDA has not been measured on
    GPU hosts yet, and the nodes of a hostfile or Slurm job are not this machine."""
    if configured != "auto":
        return configured
    from launcher.plan.topology import count_local_gpus

    return "fork" if one_local_node and count_local_gpus() == 0 else "spawn"


def rank_env(cluster: ClusterConfig, run_dir: str, method: str, environ: Mapping[str, str],
             local_ranks: int) -> dict[str, str]:
    """What every rank's environment gets from the plan, on every engine. local_ranks: the ranks
    of this machine when it is the job's one node (0 otherwise)."""
    env = {"LAUNCHER_RUN_DIR": run_dir, "PYTHONUNBUFFERED": "1", **cluster.env}
    env.update(interface_env(cluster.network_interface))
    if local_ranks and not environ.get(threads.VARIABLE):
        # This machine's cores; on other nodes the node guard decides (engines/threads.py).
        env = threads.with_thread_default(env, local_ranks)
    if cluster.max_restarts:
        # Restarted workers must not share the rendezvous store: stale keys of the dead attempt
        # send them to ports nobody listens on (pytorch/pytorch#135712).
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    if method == "fork":
        # torchrun's agent asks torch whether a GPU is there before it forks the ranks; answered by
        # the CUDA runtime, that initialises CUDA in the agent and no forked rank could use it.
        # NVML answers without it.
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    return env


def _batch_math(loaded: LoadedRecipe, topology: Topology) -> BatchMath:
    """The batch arithmetic for this world size; a RecipeError with every factor when it does not divide."""
    recipe = loaded.recipe
    tokens = getattr(loaded.recipe_module, "tokens_per_sample", None)
    try:
        math = batch_math(recipe.batch.global_, recipe.batch.micro, topology.procs_by_node,
                          recipe.train.steps, recipe.scheduler.warmup_steps,
                          tokens(recipe) if tokens else None)
    except ValueError as exc:
        problem: Problem = exc.args[0]
        raise RecipeError(loaded.source, [dataclasses.replace(problem, where=loaded.location(problem.path))]) from None
    if recipe.backend.name == "deepspeed":
        problems = deepspeed_batch_problems(recipe.backend.deepspeed_config, math)
        if problems:
            raise RecipeError(loaded.source, [dataclasses.replace(p, where=loaded.location(p.path)) for p in problems])
    return math


def rendezvous_port(configured: int | None, slurm_job_id: str, run_id: str = "") -> int:
    """The default port is never used as such, so two jobs whose first node is shared do not meet
    in one rendezvous store: inside a Slurm job it becomes 15000 + the job id's last 4 digits (as
    Lightning does; build_plan moves on to the next free port when another job holds it there);
    for a hostfile job, a port in 20000-29999 derived from the run directory (the pre-flight check
    then makes sure it is free). A port the recipe sets (configured, not None) is used as given."""
    if configured is not None:
        return configured
    if slurm_job_id and slurm_job_id.isdigit():
        return 15000 + int(slurm_job_id[-4:])
    if run_id:
        return 20000 + int(run_id, 16) % 10000
    return DEFAULT_MASTER_PORT


def _is_this_host(host: str) -> bool:
    import socket

    name = socket.gethostname()
    return host in (name, name.split(".")[0], "localhost")


def first_free_port(start: int, tries: int = 64) -> int:
    """The first port from `start` on that a rendezvous store could listen on here; `start` itself
    when none of them is (the store's own error then names it)."""
    import socket

    for port in range(start, min(start + tries, 65536)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the store binds: TIME_WAIT is free
            try:
                probe.bind(("", port))
            except OSError:
                continue
            return port
    return start


def rendezvous_port_taken(plan: LaunchPlan) -> str:
    """The rendezvous store's port when it would listen on this machine and something already holds
    it ("" otherwise): another job's store there would take this job's nodes in (two jobs on one
    port join one rendezvous). Checked at every start, --no-preflight included."""
    import socket

    port, host = plan.master_port, plan.master_addr
    if not port or plan.node_rank not in (None, 0) or not _is_local_address(host):
        return ""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the store binds: TIME_WAIT is free
        try:
            probe.bind(("", port))
        except OSError:
            return f"{host}:{port}"
    return ""


def _is_local_address(host: str) -> bool:
    """Whether `host` names this machine: its name, or an address of one of its interfaces (only
    those can be bound)."""
    import socket

    if _is_this_host(host):
        return True
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((socket.gethostbyname(host), 0))
    except OSError:
        return False
    return True


def worker_entry(start_method: str) -> list[str]:
    """How torchrun's argv names the worker. With fork, torchrun runs the file in a process forked
    from its agent (runpy), so the worker is named by path: the same installation on every node,
    like the python we name by path."""
    if start_method == "fork":
        return ["--run-path", "--start-method=fork", WORKER_SCRIPT]
    return ["-m", WORKER_MODULE]


AGENT_PRELOADS = ("torch._dynamo",)  # imported by the agent before it forks the ranks (runtime/agent.py)


def _first_positions(hosts: Sequence[str]) -> dict[str, int]:
    """Each host's node index, its first place in the list (as list.index finds it)."""
    positions: dict[str, int] = {}
    for index, host in enumerate(hosts):
        positions.setdefault(host, index)
    return positions


@dataclass(frozen=True)
class TorchrunCommand:
    """The torchrun command every node runs; nodes differ only in their process count (each agent
    tells the rendezvous its own, and torchrun numbers the ranks node after node)."""

    python: str
    nodes: int
    rendezvous: Rendezvous
    max_restarts: int
    run_dir: str
    start_method: str

    def argv(self, nproc: int) -> list[str]:
        """One node's command for its `nproc` processes."""
        preloads = AGENT_PRELOADS if self.start_method == "fork" else ()
        argv = [self.python, "-m", "launcher.runtime.agent", *preloads, "--"]
        rendezvous = self.rendezvous
        if rendezvous.standalone:
            argv += ["--standalone", "--nnodes=1"]
        elif rendezvous.node_rank is not None:
            # torchrun's static rendezvous: this node's rank as given; node 0 hosts the store.
            argv += [f"--nnodes={self.nodes}", f"--node-rank={rendezvous.node_rank}",
                     f"--master-addr={rendezvous.master}", f"--master-port={rendezvous.port}"]
        else:
            # c10d rendezvous assigns node ranks itself, so every node runs the same command.
            argv += [f"--nnodes={self.nodes}", "--rdzv-backend=c10d",
                     f"--rdzv-endpoint={host_port(rendezvous.master, rendezvous.port)}",
                     f"--rdzv-id={rendezvous.run_id}",
                     f"--rdzv-conf=join_timeout={rendezvous.join_timeout}"]
        return [
            *argv,
            f"--nproc-per-node={nproc}",
            f"--max-restarts={self.max_restarts}",
            # Per-rank stdout/stderr files under the run directory; console shows local rank 0 only.
            f"--log-dir={RunDir(self.run_dir).torchrun_logs}",
            "--tee=3",
            "--local-ranks-filter=0",
            "--log-line-prefix-template=[rank${rank}]: ",
            *worker_entry(self.start_method), "--run-dir", self.run_dir,
        ]


def _rdzv_id(run_dir: str) -> str:
    import hashlib

    return hashlib.sha1(run_dir.encode()).hexdigest()[:12]


def render_plan(plan: LaunchPlan, resolved_yaml: str, taken=(), resume: str = "") -> str:
    """The plan as `launcher plan` prints it; `taken`: recipe values an imported config gave;
    `resume`: what the run does with the run directory's checkpoint."""
    lines = ["# resolved recipe", resolved_yaml.rstrip(), ""]
    if taken:
        lines += ["# taken from the configs the recipe names (one value per setting: these run)"]
        lines += [f"  {t.render()}" for t in taken] + [""]
    lines.append("# batch arithmetic")
    rows = plan.math.rows()
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += ["", f"# launch: engine={plan.engine}, {plan.layout}, rendezvous {plan.rendezvous}",
              f"# run dir: {plan.run_dir}"]
    if resume:
        lines.append(f"# resume: {resume}")
    if plan.slurm_job_id:
        lines.append(f"# slurm job: {plan.slurm_job_id}")
    if plan.secret_names:
        lines.append(f"# secrets sent through {plan.secrets_file} (mode 0600, removed when the job ends): "
                     + ", ".join(plan.secret_names))
    engine = engine_named(plan.engine)
    for index, process in enumerate(plan.processes):
        lines.append(f"process {index} (reaches {', '.join(process.hosts)}):")
        for key, value in redact_env(process.env).items():
            lines.append(f"  env  {key}={shlex.quote(value)}")
        lines.append("  argv " + engine.describe_process(process))
    if engine.lists_nodes:
        for index, node in enumerate(plan.nodes):
            lines.append(f"node {index} ({node.host}):")
            for key, value in redact_env(node.env).items():
                lines.append(f"  env  {key}={shlex.quote(value)}")
            lines.append("  runs " + shlex.join(node.argv))
    return "\n".join(lines) + "\n"
