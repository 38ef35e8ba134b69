"""What the two hostfile engines (ssh.py, pdsh.py) share: each node runs torchrun behind the node
guard, through a remote shell that knows nothing of the launching environment, after a pre-flight
check of every host.

Everything the ranks need travels explicitly: an allowlist of the launcher's variables
(remote_env.py) and the plan's own; secrets go into a 0600 file on the shared run directory that
the guard reads (never argv). Every remote command is one string built with shlex.quote.

Pre-flight: each host is asked over ssh (in parallel, with a connect timeout) to run a few lines of
Python with the launcher's own interpreter path: that proves key-based login, the shared path to
the interpreter, that the launcher and torch are importable there, on the first host that the
rendezvous port can be bound and, on every host, that the rendezvous address resolves and a TCP
connection to its port gets an answer (a refusal counts: nothing listens yet, but the host is
reachable; a cut route, a firewall that drops, or a name that resolves to the wrong network do
not). A failure names the host and what to fix, before any rank starts, instead of a rendezvous
timeout fifteen minutes later.
"""

from __future__ import annotations

import functools
import json
import shlex
import subprocess

from launcher.engines.base import EngineBase, NodeRequest
from launcher.engines.commands import (
    Commands,
    HostProblem,
    LaunchView,
    LocalProcess,
    NodeCommand,
    interface_problem,
)
from launcher.engines.remote_env import forwarded_env
from launcher.rundir.layout import RunDir
from launcher.secrets import is_secret_name

GUARD_MODULE = "launcher.engines.node_guard"
SSH_CONNECT_TIMEOUT_S = 30


class RemoteEngine(EngineBase):
    lists_nodes = True

    def commands(self, request: NodeRequest) -> Commands:
        plain, secrets = forwarded_env(request.environ, request.forward_env)
        secret_names = tuple(sorted({*secrets, *(k for k in request.env if is_secret_name(k))}))
        public = {k: v for k, v in request.env.items() if not is_secret_name(k)}
        guard = [request.python, "-m", GUARD_MODULE, "--watch-stdin"]
        if secret_names:
            guard += ["--secrets-file", secrets_path(request.run_dir)]
        nodes = []
        slot_ids = request.slot_ids or (None,) * len(request.hosts)
        # Thousands of nodes share one environment and a few commands (nothing mutates a NodeCommand's):
        # one object each, not a copy per node.
        shared_env = {**plain, **public}
        argvs: dict[tuple[str, ...], tuple[str, ...]] = {}
        for host, devices, torchrun in zip(request.hosts, slot_ids, request.torchrun, strict=True):
            env = shared_env
            if devices is not None:
                env = {**shared_env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, devices))}
            argv = argvs.get(torchrun)
            if argv is None:
                argv = argvs[torchrun] = (*guard, "--", *torchrun)
            nodes.append(NodeCommand(host, argv, env))
        return Commands(tuple(nodes), self.processes(nodes, request.cwd), secret_names)

    def processes(self, nodes: list[NodeCommand], cwd: str) -> tuple[LocalProcess, ...]:
        raise NotImplementedError

    def preflight(self, plan: LaunchView, python: str, cwd: str) -> list[HostProblem]:
        return check_hosts([n.host for n in plan.nodes], python, cwd, plan.master_port, plan.master_addr,
                           plan.nodes[0].env.get("NCCL_SOCKET_IFNAME", "") if plan.nodes else "")

    def describe_process(self, process: LocalProcess) -> str:
        return shlex.join([*process.argv[:-1], "<remote command below>"])


def secrets_path(run_dir: str) -> str:
    return str(RunDir(run_dir).secrets)


def remote_command(node: NodeCommand, cwd: str) -> str:
    """The one string a remote shell runs: every piece quoted, user data never interpreted."""
    exports = _quoted_exports(tuple(node.env.items()))
    return f"cd {shlex.quote(cwd)} && exec env {exports} {_quoted(node.argv)}"


@functools.lru_cache(maxsize=64)  # every node of a job has the same command (and nearly the same env)
def _quoted(words: tuple[str, ...]) -> str:
    return " ".join(map(shlex.quote, words))


@functools.lru_cache(maxsize=64)
def _quoted_exports(items: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in items)


def ssh_prefix(host: str, *options: str) -> tuple[str, ...]:
    # `--` ends ssh's options: a host named like `-oProxyCommand=...` can never become one.
    return ("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", *options, "--", host)


PREFLIGHT_CONNECT_TIMEOUT_S = 10
RENDEZVOUS_PROBE_TIMEOUT_S = 5

_CHECK = """
import importlib.util, json, socket, sys
port, master, master_port, timeout = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
interfaces = sys.argv[5] if len(sys.argv) > 5 else ""
missing = [m for m in ("launcher", "torch") if importlib.util.find_spec(m) is None]
out = {"host": socket.gethostname(), "missing": missing}
if interfaces and not interfaces.startswith("^"):  # gloo binds these very names; NCCL's exclusions aside
    have = sorted(name for _, name in socket.if_nameindex())
    out["interfaces"] = have
    out["no_interface"] = [n for n in interfaces.lstrip("=").split(",") if n and n not in have]
if master:
    try:
        address = socket.getaddrinfo(master, master_port, type=socket.SOCK_STREAM)[0][4]
        out["master_ip"] = address[0]
    except OSError as e:
        out["unreachable"] = "cannot resolve " + master + ": " + str(e)
    else:
        probe = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        probe.settimeout(timeout)
        try:
            probe.connect(address)
        except ConnectionRefusedError:
            pass  # the host answered: nothing listens before the job starts
        except socket.timeout:
            out["unreachable"] = "no answer from %s (%s) port %d within %g s" % (
                master, address[0], master_port, timeout)
        except OSError as e:
            out["unreachable"] = "%s (%s) port %d: %s" % (master, address[0], master_port, e.strerror or e)
        finally:
            probe.close()
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


def check_hosts(hosts: list[str], python: str, cwd: str, master_port: int, master: str = "",
                interfaces: str = "") -> list[HostProblem]:
    """`master`: the rendezvous address every host must reach at `master_port` ("" skips that);
    `interfaces`: cluster.network_interface, which every host must have."""
    from concurrent.futures import ThreadPoolExecutor  # only a launch probes hosts, never a plan

    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        results = pool.map(lambda item: _check_host(item[1], python, cwd, master_port if item[0] == 0 else 0,
                                                    master, master_port, interfaces), enumerate(hosts))
        return [problem for found in results for problem in found]


def _check_host(host: str, python: str, cwd: str, port: int, master: str = "", master_port: int = 0,
                interfaces: str = "") -> list[HostProblem]:
    args = shlex.join([str(port), master, str(master_port), str(RENDEZVOUS_PROBE_TIMEOUT_S), interfaces])
    remote = f"cd {shlex.quote(cwd)} && exec {shlex.quote(python)} -c {shlex.quote(_CHECK)} {args}"
    argv = [*ssh_prefix(host, "-o", f"ConnectTimeout={PREFLIGHT_CONNECT_TIMEOUT_S}"), remote]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PREFLIGHT_CONNECT_TIMEOUT_S + 50,
                              check=False, stdin=subprocess.DEVNULL)
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
    if report.get("unreachable"):
        problems.append(HostProblem(host, f"cannot reach the rendezvous: {report['unreachable']}",
                                    "every node must reach the first host's rendezvous port: check routes and "
                                    "firewalls, or set cluster.master_addr (--master-addr) to an address of that "
                                    "host on a network every node shares"))
    if report.get("no_interface"):
        problems.append(interface_problem(host, report["no_interface"], report.get("interfaces", [])))
    if port and not report.get("port_free", True):
        problems.append(HostProblem(host, f"rendezvous port {port} is taken ({report.get('port_error')})",
                                    "set cluster.master_port to a free port"))
    return problems
