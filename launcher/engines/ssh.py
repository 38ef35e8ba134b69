"""A hostfile cluster over plain ssh: one connection per node (when pdsh is missing, or with
cluster.remote_shell: ssh). Closing a connection's stdin stops that node's guard gracefully."""

from __future__ import annotations

from launcher.engines.commands import LocalProcess, NodeCommand
from launcher.engines.remote import SSH_CONNECT_TIMEOUT_S, RemoteEngine, remote_command, ssh_prefix


class SshEngine(RemoteEngine):
    name = "ssh"

    def processes(self, nodes: list[NodeCommand], cwd: str) -> tuple[LocalProcess, ...]:
        # A host that cannot even be reached in this time is reported as such (exit 255), rather
        # than leaving the others to time out in the rendezvous; pdsh has its own 10 s default.
        connect = ("-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}")
        return tuple(LocalProcess((*ssh_prefix(n.host, *connect), remote_command(n, cwd)), (n.host,), {}, True)
                     for n in nodes)
