"""The Engine protocol: what starts a plan's processes, stops them and explains their failures.

One module per engine (local.py: torchrun on this machine; ssh.py and pdsh.py: hostfile
clusters; slurm.py: srun inside an allocation), as Lightning Fabric has one class per cluster
environment. Each owns its commands, how a signal reaches its processes, its pre-flight check,
its failure report and what follows a stop. The plan names its engine (`LaunchPlan.engine`);
`registry.engine_named` turns the name back into the engine: no other module compares it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from launcher.engines.commands import Commands, HostProblem, LaunchView, LocalProcess

if TYPE_CHECKING:
    from launcher.engines.group import GroupView


@dataclass(frozen=True)
class NodeRequest:
    """Everything an engine needs to write each node's command."""

    hosts: tuple[str, ...]
    slot_ids: tuple[tuple[int, ...] | None, ...]  # per host: the devices a hostfile filter kept
    torchrun: tuple[tuple[str, ...], ...]  # per host: its torchrun command (they differ in --nproc-per-node only)
    env: dict[str, str]  # what every rank gets (the run dir, cluster.env, ...)
    environ: Mapping[str, str]  # the launching shell's environment (remote engines forward some)
    forward_env: tuple[str, ...]  # more names to forward (cluster.forward_env)
    python: str
    cwd: str
    run_dir: str


class Engine(Protocol):
    name: str  # the plan's `engine`
    standalone: bool  # one node on this machine: torchrun --standalone picks its own port
    watches_host_exits: bool  # one process reaches many hosts and reports their exits (pdsh)
    lists_nodes: bool  # `launcher plan` shows each node's command

    def commands(self, request: NodeRequest) -> Commands: ...

    def stop_signal(self, signum: int) -> int:
        """The signal the launcher's own processes get when the launcher gets `signum` (a
        process with an open stdin gets EOF instead: its remote guard stops torchrun)."""

    def remote_stopper(self, plan: LaunchView) -> Callable[[], None] | None:
        """How to ask the remote nodes to stop gracefully, or None."""

    def preflight(self, plan: LaunchView, python: str, cwd: str) -> list[HostProblem]: ...

    def failure_reporter(self, plan: LaunchView) -> Callable[[int, GroupView], None] | None: ...

    def describe_process(self, process: LocalProcess) -> str:
        """The process's command line as `launcher plan` prints it."""

    def after_stop(self, plan: LaunchView, status: int, timeout_requeues: int) -> int:
        """What follows a stop on a signal (Slurm requeues); the job's final exit status."""


class EngineBase:
    """Defaults the engines share; each engine module overrides what is its own."""

    name = ""
    standalone = False
    watches_host_exits = False
    lists_nodes = False

    def stop_signal(self, signum: int) -> int:
        return signum

    def remote_stopper(self, plan: LaunchView) -> Callable[[], None] | None:
        return None

    def preflight(self, plan: LaunchView, python: str, cwd: str) -> list[HostProblem]:
        return []

    def failure_reporter(self, plan: LaunchView) -> Callable[[int, GroupView], None] | None:
        if len(plan.processes) < 2:
            return None  # one torchrun or one srun: they name their own failures
        from launcher.engines.node_report import node_reporter

        return node_reporter(plan)

    def describe_process(self, process: LocalProcess) -> str:
        import shlex

        return shlex.join(process.argv)

    def after_stop(self, plan: LaunchView, status: int, timeout_requeues: int) -> int:
        return status

