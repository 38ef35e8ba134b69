"""Which node failed, and which never arrived (docs/faults.md 13).

When one node's process fails while others still run, the launcher names the first and, if the
failure was a rendezvous timeout, the nodes that never joined: those whose remote shell could not
connect (ssh exit 255, also as pdsh reports it per host) or that were still starting when the
joined nodes gave up. The rendezvous timeout is read from the torchrun agents' own error files:
the node guard points TORCHELASTIC_ERROR_FILE at logs/nodes/ on the shared run directory.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from launcher.engines.group import exit_code
from launcher.rundir.layout import RunDir

if TYPE_CHECKING:
    from launcher.engines.commands import LaunchView
    from launcher.engines.group import GroupView

SSH_CONNECT_FAILED = 255  # ssh's own status when it could not reach or log in to the host
SETTLE_QUIET_S = 2.0  # the joined nodes time out within moments of each other ...
SETTLE_MAX_S = 10.0  # ... but a hung connection never ends by itself


def rendezvous_timed_out(run_dir: str) -> bool:
    for path in RunDir(run_dir).agent_errors.glob("*.json"):
        try:
            if "RendezvousTimeoutError" in path.read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue
    return False


def unjoined_hosts(plan: LaunchView, codes: list[int | None], host_exits: list[dict[str, int]]) -> dict[str, str]:
    """Host -> why it cannot have joined: its connection failed, or it was still starting."""
    missing = {}
    for process, code, reported in zip(plan.processes, codes, host_exits, strict=True):
        for host in process.hosts:
            if host in reported:  # pdsh named this host's exit
                status = reported[host]
            elif code is None:
                missing[host] = "still starting when the others gave up"
                continue
            else:
                status = code if len(process.hosts) == 1 else 0
            if status == SSH_CONNECT_FAILED:
                missing[host] = "ssh could not connect: exit 255"
    return missing


def node_reporter(plan: LaunchView) -> Callable[[int, GroupView], None]:
    """The report when one of several node processes (or a pdsh reaching many hosts) fails first."""

    def report(first: int, view: GroupView) -> None:
        code = exit_code(view.codes()[first] or 0)
        hosts = plan.processes[first].hosts
        if len(hosts) == 1:
            say(f"node process for {hosts[0]} failed first (exit {code})")
        else:
            failed = ", ".join(f"{h} (exit {c})" for h, c in view.host_exits[first].items())
            say(f"{plan.engine} for {', '.join(hosts)} failed first (exit {code}); failed hosts: {failed or '?'}")
        if rendezvous_timed_out(plan.run_dir):
            codes = _settle(view)
            missing = unjoined_hosts(plan, codes, view.host_exits)
            named = "; ".join(f"{host} ({why})" for host, why in missing.items()) or "none could be told apart"
            say(f"the rendezvous timed out after {_join_timeout(plan)} s (cluster.rdzv_timeout): "
                f"nodes that never joined: {named}")
            return
        running = [h for i, c in enumerate(view.codes()) if c is None for h in plan.processes[i].hosts]
        if running:
            say(f"still running at that moment, now being stopped: {', '.join(running)}")

    return report


def _join_timeout(plan: LaunchView) -> str:
    option = "--rdzv-conf=join_timeout="
    return next((a[len(option):] for n in plan.nodes[:1] for a in n.argv if a.startswith(option)), "?")


def say(message: str) -> None:
    print(f"launcher: {message}", file=sys.stderr, flush=True)


def _settle(view: GroupView) -> list[int | None]:
    """Wait until the processes stop changing state, so the joined nodes' own timeouts land."""
    codes, quiet_since, deadline = view.codes(), time.monotonic(), time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline and time.monotonic() - quiet_since < SETTLE_QUIET_S:
        time.sleep(0.1)
        now = view.codes()
        if now != codes:
            codes, quiet_since = now, time.monotonic()
        if all(c is not None for c in codes):
            break
    return codes
