"""One node, this machine: torchrun itself, started by the launcher."""

from __future__ import annotations

import signal

from launcher.engines.base import EngineBase, NodeRequest
from launcher.engines.commands import Commands, LocalProcess, NodeCommand


class LocalEngine(EngineBase):
    name = "torchrun"
    standalone = True

    def commands(self, request: NodeRequest) -> Commands:
        node = NodeCommand("localhost", request.torchrun[0], request.env)
        return Commands((node,), (LocalProcess(request.torchrun[0], ("localhost",), request.env),))

    def stop_signal(self, signum: int) -> int:
        # torchrun relays INT, TERM and HUP to its ranks, which checkpoint; USR1 would kill it.
        return signal.SIGTERM if signum == signal.SIGUSR1 else signum
