"""Where the job runs: how many nodes, processes per node, and which engine starts them."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from launcher.config.errors import Problem
from launcher.plan.hostfile import Host, parse_hostfile


@dataclass(frozen=True)
class Topology:
    engine: str  # "torchrun" (one node) | "ssh" (hostfile)
    hosts: tuple[str, ...]  # one entry per node; "localhost" for a single local node
    nproc_per_node: int

    @property
    def nodes(self) -> int:
        return len(self.hosts)

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


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


def resolve_topology(nodes: int, nproc: int | str, hostfile: str | None) -> Topology:
    """Raise ValueError(list[Problem]) on an impossible request."""
    if nproc == "auto":
        nproc = max(1, count_local_gpus())
    assert isinstance(nproc, int)
    if hostfile:
        path = Path(hostfile)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            problem = Problem("cluster.hostfile", f"cannot read hostfile: {exc}", "check the path", hostfile)
            raise ValueError([problem]) from None
        hosts, problems = parse_hostfile(text, hostfile)
        if problems:
            raise ValueError(problems)
        return _from_hosts(hosts, hostfile)
    if nodes > 1:
        raise ValueError([Problem("cluster.nodes", f"{nodes} nodes need a hostfile or a Slurm allocation",
                                  "pass --hostfile FILE (see hostfiles/), or run inside `salloc`/`sbatch`")])
    return Topology("torchrun", ("localhost",), nproc)


def _from_hosts(hosts: list[Host], source: str) -> Topology:
    slots = {h.slots for h in hosts}
    if len(slots) != 1:
        listing = ", ".join(f"{h.name}={h.slots}" for h in hosts)
        raise ValueError([Problem("hostfile", f"hosts have different slot counts ({listing})",
                                  "give every host the same slots=N so the batch arithmetic is one product", source)])
    return Topology("ssh", tuple(h.name for h in hosts), slots.pop())
