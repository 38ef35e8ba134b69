"""One node of a job whose nodes are started by something else: one `launcher run --node-rank R`
per node (Kubernetes pods, a cloud VM group, a batch system without Slurm), or an `srun launcher
run` step, one task per node. This node runs its own torchrun; node 0 hosts the rendezvous store
(torchrun's static rendezvous at cluster.master_addr:master_port), as `torchrun --node-rank`
does, so the node ranks are the ones given and the nodes meet without ssh or a scheduler of ours.
"""

from __future__ import annotations

import signal

from launcher.engines.base import EngineBase, NodeRequest
from launcher.engines.commands import Commands, LocalProcess, NodeCommand


class NodeEngine(EngineBase):
    name = "node"

    def commands(self, request: NodeRequest) -> Commands:
        this = request.hosts[0]  # the plan holds this node's own command only
        node = NodeCommand(this, request.torchrun[0], request.env)
        return Commands((node,), (LocalProcess(request.torchrun[0], (this,), request.env),))

    def stop_signal(self, signum: int) -> int:
        # torchrun relays INT, TERM and HUP to its ranks, which checkpoint; USR1 (srun's relay of
        # Slurm's warning) would kill it.
        return signal.SIGTERM if signum == signal.SIGUSR1 else signum
