"""A hostfile cluster through pdsh: one process fans the command out to every node.

pdsh reports each host's exit on its stderr, which the launcher reads to name failed hosts; it
does not relay stdin, so a graceful stop asks each host's guard directly (pkill over pdsh),
matched by this job's rendezvous id.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable

from launcher.engines.commands import LaunchView, LocalProcess, NodeCommand
from launcher.engines.remote import GUARD_MODULE, RemoteEngine, remote_command


class PdshEngine(RemoteEngine):
    name = "pdsh"
    watches_host_exits = True

    def processes(self, nodes: list[NodeCommand], cwd: str) -> tuple[LocalProcess, ...]:
        # pdsh runs one command on many hosts: group hosts whose commands are identical (they differ
        # only when include/exclude filters give hosts different CUDA_VISIBLE_DEVICES).
        groups: dict[str, list[str]] = {}
        commands: dict[tuple[int, int], str] = {}  # nodes share argv and env objects: quote each pair once
        for node in nodes:
            key = (id(node.argv), id(node.env))
            if key not in commands:
                commands[key] = remote_command(node, cwd)
            groups.setdefault(commands[key], []).append(node.host)
        return tuple(LocalProcess(pdsh_argv(hosts, command), tuple(hosts), {"PDSH_RCMD_TYPE": "ssh"}, True)
                     for command, hosts in groups.items())

    def remote_stopper(self, plan: LaunchView) -> Callable[[], None] | None:
        # Anchored at the interpreter: the launcher host is often a node too, and there the local
        # ssh clients carry the same words in their command lines; they must not be hit.
        pattern = f"^[^ ]*python[^ ]* -m {GUARD_MODULE} .*--rdzv-id={plan.rendezvous_id}( |$)"
        hosts = ",".join(h for p in plan.processes for h in p.hosts)
        # pdsh joins its command words for the remote shell: pass one quoted string.
        argv = ["pdsh", "-R", "ssh", "-w", hosts, shlex.join(["pkill", "-TERM", "-f", "--", pattern])]
        return lambda: subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                                      check=False)

    def failure_reporter(self, plan: LaunchView):
        from launcher.engines.node_report import node_reporter

        return node_reporter(plan)  # even one pdsh process reaches many hosts


def pdsh_argv(hosts: list[str], command: str) -> tuple[str, ...]:
    # -S: exit with the largest remote status; -f: connect to every host at once; -w takes one
    # argv element, and hostnames are validated (no `,`, `^`, `-` prefix) so it lists only hosts.
    return ("pdsh", "-S", "-f", str(max(32, len(hosts))), "-R", "ssh", "-w", ",".join(hosts), command)
