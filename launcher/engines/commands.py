"""What an engine starts, as data: the command of each node and the processes the launcher runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
class Commands:
    """An engine's answer to a NodeRequest."""

    nodes: tuple[NodeCommand, ...]
    processes: tuple[LocalProcess, ...]
    # Secret variables (values never in the plan) the remote ranks need: written at launch to a
    # 0600 file that the node guard reads, removed when the job ends.
    secret_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostProblem:
    host: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.host}: {self.message}\n  hint: {self.hint}"


def interface_problem(host: str, missing: list[str], present: list[str]) -> HostProblem:
    return HostProblem(host, f"no network interface {', '.join(missing)} (cluster.network_interface); this host has "
                       f"{', '.join(present) or 'none'}", "set cluster.network_interface to interfaces every node "
                       "has (`ip -brief link`), or leave it unset")


def local_interface_problems(interfaces: str) -> list[HostProblem]:
    """cluster.network_interface on this machine, where the ranks of a local job bind it."""
    import socket

    if not interfaces or interfaces.startswith("^"):
        return []
    present = sorted(name for _, name in socket.if_nameindex())
    missing = [name for name in interfaces.lstrip("=").split(",") if name and name not in present]
    return [interface_problem(socket.gethostname(), missing, present)] if missing else []


class PreflightFailed(Exception):
    """Hosts that cannot run the job (unreachable, no Python, a port taken): nothing was started."""

    def __init__(self, problems: list[HostProblem]) -> None:
        super().__init__("pre-flight check failed, nothing was started:\n" + "\n".join(f"  {p}" for p in problems))


class LaunchView(Protocol):
    """What an engine reads of a launch plan (launcher.plan.launch.LaunchPlan is one)."""

    run_dir: str
    engine: str
    nodes: tuple[NodeCommand, ...]
    processes: tuple[LocalProcess, ...]
    slurm_job_id: str

    @property
    def rendezvous_id(self) -> str: ...

    @property
    def master_addr(self) -> str: ...

    @property
    def master_port(self) -> int: ...

    @property
    def secrets_file(self) -> str: ...
