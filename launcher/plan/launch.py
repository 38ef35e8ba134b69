"""The LaunchPlan: every process we will start, as data. Built here, executed in engines/."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.config.errors import Problem, RecipeError
from launcher.config.load import LoadedRecipe
from launcher.config.schema import ClusterConfig
from launcher.plan.batch import BatchMath, batch_math, deepspeed_batch_problems
from launcher.plan.remote_env import forwarded_env
from launcher.plan.topology import Topology
from launcher.rundir.layout import RunDir
from launcher.secrets import is_secret_name, redact_env

WORKER_MODULE = "launcher.runtime.worker"
WORKER_SCRIPT = str(Path(__file__).resolve().parent.parent / "runtime" / "worker.py")
SSH_CONNECT_TIMEOUT_S = 30
DEFAULT_MASTER_PORT = ClusterConfig.master_port
GUARD_MODULE = "launcher.engines.node_guard"


@dataclass(frozen=True)
class NodeCommand:
    """What runs on one node (torchrun, behind the node guard on remote nodes)."""

    host: str
    argv: tuple[str, ...]
    env: dict[str, str]  # set on that node on top of its environment (secrets: names only, see secret_names)


@dataclass(frozen=True)
class LocalProcess:
    """What the launcher itself starts on this machine: torchrun, ssh, pdsh or srun."""

    argv: tuple[str, ...]
    hosts: tuple[str, ...]  # the node(s) it reaches
    env: dict[str, str]  # added to the launcher's own environment
    keep_stdin: bool = False  # ssh/pdsh: stdin stays open; its EOF tells the remote guard to stop


@dataclass(frozen=True)
class LaunchPlan:
    run_dir: str
    engine: str
    nodes: tuple[NodeCommand, ...]
    processes: tuple[LocalProcess, ...]
    nproc_per_node: int
    rendezvous: str
    math: BatchMath
    # Secret variables (values never in the plan) the remote ranks need; written at launch to a
    # 0600 file that the node guard reads, removed when the job ends.
    secret_names: tuple[str, ...] = ()
    slurm_job_id: str = ""

    @property
    def rendezvous_id(self) -> str:
        return _rdzv_id(self.run_dir)

    @property
    def master_port(self) -> int:
        """The rendezvous port (0 for a single local node: torchrun's --standalone picks one)."""
        return int(self.rendezvous.rsplit(":", 1)[1]) if self.rendezvous.startswith("c10d://") else 0

    @property
    def secrets_file(self) -> str:
        return secrets_path(self.run_dir) if self.secret_names else ""

    def to_dict(self, redact: bool = True) -> dict:
        data = asdict(self)
        data["nodes"] = [{"host": n.host, "argv": list(n.argv), "env": redact_env(n.env) if redact else dict(n.env)}
                         for n in self.nodes]
        data["processes"] = [{"argv": list(p.argv), "hosts": list(p.hosts),
                              "env": redact_env(p.env) if redact else dict(p.env), "keep_stdin": p.keep_stdin}
                             for p in self.processes]
        return data


def build_plan(loaded: LoadedRecipe, topology: Topology, run_dir: str, python: str,
               environ: Mapping[str, str], cwd: str) -> LaunchPlan:
    recipe = loaded.recipe
    tokens = getattr(loaded.module, "tokens_per_sample", None)
    try:
        math = batch_math(recipe.batch.global_, recipe.batch.micro, topology.world_size, topology.nodes,
                          topology.nproc_per_node, recipe.train.steps, recipe.scheduler.warmup_steps,
                          tokens(recipe) if tokens else None)
    except ValueError as exc:
        problem: Problem = exc.args[0]
        raise RecipeError(loaded.source, [problem]) from None
    if recipe.backend.name == "deepspeed":
        problems = deepspeed_batch_problems(recipe.backend.deepspeed_config, math)
        if problems:
            raise RecipeError(loaded.source, problems)
    cluster = recipe.cluster
    explicit = {"LAUNCHER_RUN_DIR": run_dir, "PYTHONUNBUFFERED": "1", **cluster.env}
    if cluster.max_restarts:
        # Restarted workers must not share the rendezvous store: stale keys of the dead attempt
        # send them to ports nobody listens on (pytorch/pytorch#135712).
        explicit["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    master = topology.hosts[0]
    port = rendezvous_port(cluster.master_port, topology.slurm_job_id, _rdzv_id(run_dir))
    rendezvous = "standalone" if topology.nodes == 1 and topology.engine == "torchrun" \
        else f"c10d://{master}:{port}"
    if cluster.start_method == "fork":
        # torchrun's agent asks torch whether a GPU is there before it forks the ranks; answered by
        # the CUDA runtime, that initialises CUDA in the agent and no forked rank could use it.
        # NVML answers without it.
        explicit["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    torchrun = torchrun_argv(python, topology, cluster.max_restarts, cluster.rdzv_timeout, master, port, run_dir,
                             cluster.start_method)
    if topology.engine == "torchrun":
        node = NodeCommand("localhost", tuple(torchrun), explicit)
        return LaunchPlan(run_dir, "torchrun", (node,), (LocalProcess(tuple(torchrun), ("localhost",), explicit),),
                          topology.nproc_per_node, rendezvous, math)
    if topology.engine == "slurm":
        guarded = (python, "-m", GUARD_MODULE, "--", *torchrun)
        nodes = tuple(NodeCommand(host, guarded, explicit) for host in topology.hosts)
        srun = srun_argv(topology, guarded)
        return LaunchPlan(run_dir, "slurm", nodes, (LocalProcess(srun, topology.hosts, explicit),),
                          topology.nproc_per_node, rendezvous, math, (), topology.slurm_job_id)
    # Hostfile: the remote login environment knows nothing of ours, so everything travels explicitly.
    plain, secrets = forwarded_env(environ, cluster.forward_env)
    secret_names = tuple(sorted({*secrets, *(k for k in explicit if is_secret_name(k))}))
    public = {k: v for k, v in explicit.items() if not is_secret_name(k)}
    guard = [python, "-m", GUARD_MODULE, "--watch-stdin"]
    if secret_names:
        guard += ["--secrets-file", secrets_path(run_dir)]
    nodes = []
    for host, slot_ids in zip(topology.hosts, topology.slot_ids or [None] * topology.nodes, strict=True):
        env = {**plain, **public}
        if slot_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slot_ids))
        nodes.append(NodeCommand(host, (*guard, "--", *torchrun), env))
    processes = remote_processes(topology.engine, nodes, cwd)
    return LaunchPlan(run_dir, topology.engine, tuple(nodes), processes, topology.nproc_per_node, rendezvous,
                      math, secret_names)


def secrets_path(run_dir: str) -> str:
    return str(RunDir(run_dir).secrets)


def rendezvous_port(configured: int, slurm_job_id: str, run_id: str = "") -> int:
    """The default port is never used as such, so two jobs whose first node is shared do not meet
    in one rendezvous store: inside a Slurm job it becomes 15000 + the job id's last 4 digits (as
    Lightning does); for a hostfile job, a port in 20000-29999 derived from the run directory
    (the pre-flight check then makes sure it is free). A port the recipe sets is used as given."""
    if configured != DEFAULT_MASTER_PORT:
        return configured
    if slurm_job_id and slurm_job_id.isdigit():
        return 15000 + int(slurm_job_id[-4:])
    if run_id:
        return 20000 + int(run_id, 16) % 10000
    return configured


def remote_command(node: NodeCommand, cwd: str) -> str:
    """The one string a remote shell runs: every piece quoted, user data never interpreted."""
    exports = [f"{k}={shlex.quote(v)}" for k, v in node.env.items()]
    return f"cd {shlex.quote(cwd)} && exec env {' '.join([*exports, *map(shlex.quote, node.argv)])}"


def remote_processes(engine: str, nodes: list[NodeCommand], cwd: str) -> tuple[LocalProcess, ...]:
    if engine == "ssh":
        # A host that cannot even be reached in this time is reported as such (exit 255), rather
        # than leaving the others to time out in the rendezvous; pdsh has its own 10 s default.
        connect = ("-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}")
        return tuple(LocalProcess((*ssh_prefix(n.host, *connect), remote_command(n, cwd)), (n.host,), {}, True)
                     for n in nodes)
    # pdsh runs one command on many hosts: group hosts whose commands are identical (they differ
    # only when include/exclude filters give hosts different CUDA_VISIBLE_DEVICES).
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(remote_command(node, cwd), []).append(node.host)
    return tuple(LocalProcess(pdsh_argv(hosts, command), tuple(hosts), {"PDSH_RCMD_TYPE": "ssh"}, True)
                 for command, hosts in groups.items())


def pdsh_argv(hosts: list[str], command: str) -> tuple[str, ...]:
    # -S: exit with the largest remote status; -f: connect to every host at once; -w takes one
    # argv element, and hostnames are validated (no `,`, `^`, `-` prefix) so it lists only hosts.
    return ("pdsh", "-S", "-f", str(max(32, len(hosts))), "-R", "ssh", "-w", ",".join(hosts), command)


def srun_argv(topology: Topology, command: tuple[str, ...]) -> tuple[str, ...]:
    # One task per node runs torchrun, which starts that node's ranks; --kill-on-bad-exit ends the
    # step when one node fails; --cpu-bind=none lets torchrun's ranks use all of the node's CPUs.
    return ("srun", f"--nodes={topology.nodes}", f"--ntasks={topology.nodes}", "--ntasks-per-node=1",
            f"--nodelist={','.join(topology.hosts)}", "--kill-on-bad-exit=1", "--cpu-bind=none",
            "--export=ALL", "--", *command)


def worker_entry(start_method: str) -> list[str]:
    """How torchrun's argv names the worker. With fork, torchrun runs the file in a process forked
    from its agent (runpy), so the worker is named by path: the same installation on every node,
    like the python we name by path."""
    if start_method == "fork":
        return ["--run-path", "--start-method=fork", WORKER_SCRIPT]
    return ["-m", WORKER_MODULE]


def torchrun_argv(python: str, topology: Topology, max_restarts: int, rdzv_timeout: int,
                  master: str, port: int, run_dir: str, start_method: str = "spawn") -> list[str]:
    argv = [python, "-m", "torch.distributed.run"]
    if topology.nodes == 1 and topology.engine == "torchrun":
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
        f"--log-dir={RunDir(run_dir).torchrun_logs}",
        "--tee=3",
        "--local-ranks-filter=0",
        "--log-line-prefix-template=[rank${rank}]: ",
        *worker_entry(start_method), "--run-dir", run_dir,
    ]
    return argv


def ssh_prefix(host: str, *options: str) -> tuple[str, ...]:
    # `--` ends ssh's options: a host named like `-oProxyCommand=...` can never become one.
    return ("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", *options, "--", host)


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
    if plan.slurm_job_id:
        lines.append(f"# slurm job: {plan.slurm_job_id}")
    if plan.secret_names:
        lines.append(f"# secrets sent through {plan.secrets_file} (mode 0600, removed when the job ends): "
                     + ", ".join(plan.secret_names))
    for index, process in enumerate(plan.processes):
        lines.append(f"process {index} (reaches {', '.join(process.hosts)}):")
        for key, value in redact_env(process.env).items():
            lines.append(f"  env  {key}={shlex.quote(value)}")
        if plan.engine in ("ssh", "pdsh"):
            lines.append("  argv " + shlex.join([*process.argv[:-1], "<remote command below>"]))
        else:
            lines.append("  argv " + shlex.join(process.argv))
    if plan.engine in ("ssh", "pdsh", "slurm"):
        for index, node in enumerate(plan.nodes):
            lines.append(f"node {index} ({node.host}):")
            for key, value in redact_env(node.env).items():
                lines.append(f"  env  {key}={shlex.quote(value)}")
            lines.append("  runs " + shlex.join(node.argv))
    return "\n".join(lines) + "\n"
