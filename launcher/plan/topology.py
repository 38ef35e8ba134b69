"""Where the job runs: how many nodes, processes per node, and which engine starts them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from launcher.config.errors import Problem
from launcher.config.files import HOSTFILE_LIMIT, UnreadableFile, read_small_text
from launcher.engines.registry import LOCAL, NODE, SLURM, remote_engine
from launcher.plan.hostfile import apply_filters, parse_hostfile
from launcher.plan.hostlist import expand_hostlist


@dataclass(frozen=True)
class Topology:
    engine: str  # the name of the engine that starts it (launcher.engines.registry)
    hosts: tuple[str, ...]  # one entry per node; "localhost" for a single local node
    nproc_per_node: int  # processes on each node; with uneven hostfile hosts, on the first one
    # Per host: the device indices a hostfile filter selected (exported as CUDA_VISIBLE_DEVICES).
    slot_ids: tuple[tuple[int, ...] | None, ...] = ()
    slurm_job_id: str = ""
    # Per host, when hostfile hosts keep different slot counts (a filter that leaves out one
    # failing GPU): torchrun's agents each start their own count and number the ranks in turn.
    uneven_procs: tuple[int, ...] = ()
    # This machine's node, when each node is started on its own (engines/node.py): the plan then
    # holds this node's command only, and hosts[0] is the rendezvous host (node 0).
    node_rank: int | None = None

    @property
    def started_here(self) -> tuple[str, ...]:
        """The hosts whose commands this launcher starts (every node, or this one)."""
        return self.hosts if self.node_rank is None else (self.hosts[self.node_rank],)

    @property
    def nodes(self) -> int:
        return len(self.hosts)

    @property
    def procs_by_node(self) -> tuple[int, ...]:
        return self.uneven_procs or (self.nproc_per_node,) * self.nodes

    @property
    def world_size(self) -> int:
        return sum(self.procs_by_node)


def count_local_gpus() -> int:
    """GPUs visible to this process, without importing torch (which costs over a second)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def local_gpu_memory() -> int | None:
    """Bytes of this machine's smallest GPU (nvidia-smi), or None when it cannot say."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sizes = [int(line.strip()) for line in listing.stdout.splitlines() if line.strip().isdigit()]
    return min(sizes) * 1024**2 if listing.returncode == 0 and sizes else None  # nvidia-smi counts MiB


@dataclass(frozen=True)
class TopologyRequest:
    nodes: int | None  # None: not asked for (the recipe default or the Slurm allocation decides)
    nproc: int | str
    hostfile: str | None = None
    include: str = ""
    exclude: str = ""
    remote_shell: str = "auto"
    node_rank: int | None = None  # --node-rank: this machine is one node; something else starts the others
    master_addr: str = ""  # cluster.master_addr: node 0's address, which every node dials


def resolve_topology(request: TopologyRequest, environ: Mapping[str, str] | None = None,
                     which: Callable[[str], str | None] | None = None) -> Topology:
    """Raise ValueError(list[Problem]) on an impossible request. `environ`/`which` are test seams."""
    environ = os.environ if environ is None else environ
    which = which or shutil.which
    nproc = request.nproc
    if request.node_rank is not None or in_srun_step(environ):
        return _this_node(request, environ)
    if request.hostfile:
        return _from_hostfile(request, which)
    if environ.get("SLURM_JOB_ID") and environ.get("SLURM_JOB_NODELIST"):
        return _from_slurm(request, environ)
    if request.include or request.exclude:
        raise ValueError([Problem("--include/--exclude", "filters need a hostfile", "pass --hostfile FILE")])
    nodes = request.nodes or 1
    if nodes > 1:
        raise ValueError([Problem("cluster.nodes", f"{nodes} nodes need a hostfile or a Slurm allocation",
                                  "pass --hostfile FILE (see hostfiles/), run inside `salloc`/`sbatch`, "
                                  "or use `launcher submit`")])
    if nproc == "auto":
        nproc = max(1, count_local_gpus())
    assert isinstance(nproc, int)
    return Topology(LOCAL, ("localhost",), nproc)


def _from_hostfile(request: TopologyRequest, which: Callable[[str], str | None]) -> Topology:
    source = str(request.hostfile)
    try:
        text = read_small_text(source, HOSTFILE_LIMIT)
    except UnreadableFile as exc:
        raise ValueError([Problem("cluster.hostfile", f"hostfile {exc.message}", exc.hint, source)]) from None
    hosts, problems = parse_hostfile(text, source)
    if not problems:
        hosts, problems = apply_filters(hosts, request.include, request.exclude, source)
    if problems:
        raise ValueError(problems)
    if request.nodes and request.nodes != len(hosts):
        raise ValueError([Problem("cluster.nodes", f"{request.nodes} nodes asked for, the hostfile has {len(hosts)}",
                                  "drop --nodes/cluster.nodes or filter hosts with --include/--exclude", source)])
    engine = remote_engine(request.remote_shell, which)
    slots = tuple(h.slots for h in hosts)  # DeepSpeed's meaning: processes on that host (filters narrow them)
    uneven = slots if len(set(slots)) > 1 else ()
    return Topology(engine, tuple(h.name for h in hosts), slots[0], tuple(h.slot_ids for h in hosts),
                    uneven_procs=uneven)


def _from_slurm(request: TopologyRequest, environ: Mapping[str, str]) -> Topology:
    job = environ["SLURM_JOB_ID"]
    try:
        allocated = expand_hostlist(environ["SLURM_JOB_NODELIST"])
    except ValueError as exc:
        raise ValueError([Problem("SLURM_JOB_NODELIST", str(exc), "is this a real Slurm allocation?")]) from None
    nodes = request.nodes or len(allocated)
    if nodes > len(allocated):
        raise ValueError([Problem("cluster.nodes", f"{nodes} nodes asked for, Slurm job {job} has {len(allocated)}",
                                  "ask Slurm for more nodes (sbatch/salloc --nodes) or lower --nodes")])
    nproc = request.nproc
    if nproc == "auto":
        gpus = environ.get("SLURM_GPUS_ON_NODE", "")
        nproc = int(gpus) if gpus.isdigit() and int(gpus) > 0 else max(1, count_local_gpus())
    assert isinstance(nproc, int)
    return Topology(SLURM, tuple(allocated[:nodes]), nproc, (), job)


def in_srun_step(environ: Mapping[str, str]) -> bool:
    """`srun launcher run ...`: this process is a task of a job step (a batch script's own shell is
    not), so starting another srun would nest one inside each task."""
    return bool(environ.get("SLURM_JOB_ID") and environ.get("SLURM_STEP_ID") and environ.get("SLURM_NODEID"))


def _this_node(request: TopologyRequest, environ: Mapping[str, str]) -> Topology:
    """One node of a job started node by node: from --node-rank and --nodes, or from the srun step
    this process is a task of (one task per node)."""
    if request.hostfile:
        raise ValueError([Problem("--node-rank", "a hostfile job starts every node itself",
                                  "drop --node-rank, or the hostfile")])
    if request.node_rank is None:  # an srun task
        nodes, node_rank, master = _srun_step(environ)
    else:
        nodes, node_rank, master = request.nodes or 1, request.node_rank, request.master_addr
        if not 0 <= node_rank < nodes:
            raise ValueError([Problem("--node-rank", f"{node_rank} is not a node of {nodes} (0..{nodes - 1})",
                                      "give --nodes N and this node's rank, 0 on the rendezvous host")])
    master = request.master_addr or master
    if not master:
        raise ValueError([Problem("--master-addr", "nodes started one by one meet at node 0, whose address is "
                                  "not given", "give node 0's address: --master-addr ADDR (cluster.master_addr)")])
    nproc = request.nproc
    if nproc == "auto":
        nproc = max(1, count_local_gpus())
    assert isinstance(nproc, int)
    import socket

    hosts = tuple(master if r == 0 else socket.gethostname() if r == node_rank else f"node-{r}" for r in range(nodes))
    return Topology(NODE, hosts, nproc, slurm_job_id=environ.get("SLURM_JOB_ID", "") if request.node_rank is None
                    else "", node_rank=node_rank)


def _srun_step(environ: Mapping[str, str]) -> tuple[int, int, str]:
    nodes = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES") or 1)
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or nodes)
    if tasks != nodes:
        raise ValueError([Problem("srun", f"this step runs {tasks} tasks on {nodes} nodes: each task would start "
                                  "a node's worth of ranks", "one launcher per node (`srun --ntasks-per-node=1 "
                                  "launcher run ...`), or `launcher run` once in the batch script: it starts srun "
                                  "itself")])
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
    try:
        first = expand_hostlist(nodelist)[0] if nodelist else ""
    except ValueError:
        first = ""
    return nodes, int(environ["SLURM_NODEID"]), first
