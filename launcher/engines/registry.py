"""The engines by name: the one place a plan's `engine` string becomes an engine."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from launcher.config.errors import Problem
from launcher.engines.base import Engine
from launcher.engines.local import LocalEngine
from launcher.engines.node import NodeEngine
from launcher.engines.pdsh import PdshEngine
from launcher.engines.slurm import SlurmEngine
from launcher.engines.ssh import SshEngine

_ENGINES: dict[str, Engine] = {engine.name: engine for engine in (LocalEngine(), SshEngine(), PdshEngine(),
                                                                  SlurmEngine(), NodeEngine())}
LOCAL, SLURM, NODE = LocalEngine.name, SlurmEngine.name, NodeEngine.name


def engine_named(name: str) -> Engine:
    return _ENGINES[name]


def remote_engine(remote_shell: str, which: Callable[[str], str | None] = shutil.which) -> str:
    """The hostfile engine for cluster.remote_shell (auto: pdsh when installed, else ssh); raises
    ValueError([Problem]) when pdsh is asked for and missing."""
    if remote_shell == PdshEngine.name and not which("pdsh"):
        raise ValueError([Problem("cluster.remote_shell", "pdsh is not installed here",
                                  "install pdsh, or set cluster.remote_shell=ssh")])
    if remote_shell == SshEngine.name or not which("pdsh"):
        return SshEngine.name
    return PdshEngine.name
