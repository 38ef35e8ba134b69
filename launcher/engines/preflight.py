"""Before starting a hostfile job: can we reach every host, and is the rendezvous port free?

Each host is asked over ssh (in parallel, with a connect timeout) to run a few lines of Python
with the launcher's own interpreter path: that proves key-based login, the shared path to the
interpreter, that the launcher and torch are importable there and, on the first host, that the
master port can be bound. A failure names the host and what to fix, before any rank starts, instead
of a rendezvous timeout fifteen minutes later.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from launcher.plan.launch import ssh_prefix

CONNECT_TIMEOUT_S = 10

_CHECK = """
import importlib.util, json, socket, sys
port = int(sys.argv[1])
missing = [m for m in ("launcher", "torch") if importlib.util.find_spec(m) is None]
out = {"host": socket.gethostname(), "missing": missing}
if port:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the TCPStore binds: TIME_WAIT is no conflict
    try:
        s.bind(("", port))
        out["port_free"] = True
    except OSError as e:
        out["port_free"] = False
        out["port_error"] = str(e)
    finally:
        s.close()
print(json.dumps(out))
"""


@dataclass(frozen=True)
class HostProblem:
    host: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.host}: {self.message}\n  hint: {self.hint}"


def check_hosts(hosts: list[str], python: str, cwd: str, master_port: int) -> list[HostProblem]:
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        results = pool.map(lambda item: _check_host(item[1], python, cwd, master_port if item[0] == 0 else 0),
                           enumerate(hosts))
        return [problem for found in results for problem in found]


def _check_host(host: str, python: str, cwd: str, port: int) -> list[HostProblem]:
    remote = f"cd {shlex.quote(cwd)} && exec {shlex.quote(python)} -c {shlex.quote(_CHECK)} {port}"
    argv = [*ssh_prefix(host, "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"), remote]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CONNECT_TIMEOUT_S + 50, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return [HostProblem(host, "no answer over ssh within 60 s", "is the host up and reachable?")]
    if done.returncode == 255:
        reason = done.stderr.strip().splitlines()[-1:] or ["ssh failed"]
        return [HostProblem(host, f"ssh cannot connect: {reason[0]}",
                            f"`ssh {host} true` must work without a prompt (keys, known_hosts, BatchMode)")]
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-2:])
        return [HostProblem(host, f"the check failed there (exit {done.returncode}): {tail}",
                            f"{python} and {cwd} must exist on every host (a shared filesystem)")]
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [HostProblem(host, f"unexpected answer: {done.stdout[-200:]!r}",
                            "check the remote shell's startup files (they must not print)")]
    problems = []
    if report.get("missing"):
        problems.append(HostProblem(host, f"cannot import {', '.join(report['missing'])} with {python}",
                                    "install the launcher in the same environment on every host"))
    if port and not report.get("port_free", True):
        problems.append(HostProblem(host, f"rendezvous port {port} is taken ({report.get('port_error')})",
                                    "set cluster.master_port to a free port"))
    return problems
