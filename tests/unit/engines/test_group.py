"""The process group and the node report: the first failure, pdsh's per-host exits, nodes that never joined."""

import os
import time


def test_first_failing_node_is_named_and_the_ones_still_starting_are_listed():
    """docs/faults.md 13 at the launcher's seam: node 0 fails (e.g. rendezvous timeout) while node 1 is
    still connecting; the report sees both, and node 1's process is stopped, not left behind."""
    from launcher.engines.group import Command, run_group

    seen = []
    started = time.monotonic()
    status = run_group([Command(["sh", "-c", "sleep 0.3; exit 3"], dict(os.environ)),
                        Command(["sleep", "30"], dict(os.environ))],
                       grace=2, on_failure=lambda first, view: seen.append((first, view.codes())))
    assert status == 3 and seen == [(0, [3, None])]
    assert time.monotonic() - started < 10  # the sleeping node was stopped, not waited for


def test_pdsh_per_host_exits_are_read_from_its_stderr_and_passed_through(capfd):
    from launcher.engines.group import Command, run_group

    script = ("echo 'host1: torch...RendezvousTimeoutError' >&2; "
              "echo 'pdsh@login: host2: ssh exited with exit code 255' >&2; "
              "echo 'pdsh@login: host1: ssh exited with exit code 1' >&2; exit 255")
    seen = []

    def report(first, view):
        view.codes()  # as the real report does: this waits for an exited pdsh's stderr
        seen.append(dict(view.host_exits[first]))

    status = run_group([Command(["sh", "-c", script], dict(os.environ), pdsh_host_exits=True),
                        Command(["sleep", "30"], dict(os.environ))], grace=2, on_failure=report)
    # Complete when the report runs: the view waits for an exited process's stderr to be read.
    assert status == 255 and seen == [{"host2": 255, "host1": 1}]
    assert "ssh exited with exit code 255" in capfd.readouterr().err  # the user still sees pdsh's lines


def _hostfile_plan(engine: str, hosts: list[str], tmp_path):
    from launcher.engines.commands import LocalProcess
    from launcher.plan.launch import LaunchPlan

    if engine == "ssh":
        processes = tuple(LocalProcess(("ssh", h), (h,), {}, True) for h in hosts)
    else:
        processes = (LocalProcess(("pdsh",), tuple(hosts), {}, True),)
    return LaunchPlan(str(tmp_path), engine, (), processes, 1, "c10d://host1:29500", None)


def test_unjoined_hosts_from_ssh_exits_pdsh_lines_and_processes_still_starting(tmp_path):
    from launcher.engines.node_report import unjoined_hosts

    ssh = _hostfile_plan("ssh", ["host1", "host2", "host3", "host4"], tmp_path)
    # host1 and host2 joined and timed out (exit 1), host3 never connected, host4 is still connecting.
    missing = unjoined_hosts(ssh, [1, 1, 255, None], [{}, {}, {}, {}])
    assert list(missing) == ["host3", "host4"] and "255" in missing["host3"] and "starting" in missing["host4"]
    pdsh = _hostfile_plan("pdsh", ["host1", "host2", "host3"], tmp_path)
    assert list(unjoined_hosts(pdsh, [255], [{"host1": 1, "host2": 255}])) == ["host2"]
    assert list(unjoined_hosts(pdsh, [None], [{"host1": 1}])) == ["host2", "host3"]


def test_rendezvous_timeout_is_read_from_the_agents_error_files(tmp_path):
    from launcher.engines.node_report import rendezvous_timed_out
    from launcher.rundir import RunDir

    errors = RunDir(tmp_path).agent_errors

    assert not rendezvous_timed_out(str(tmp_path))
    errors.mkdir(parents=True)
    (errors / "node1-7.error.json").write_text('{"message": {"message": "ValueError"}}')
    assert not rendezvous_timed_out(str(tmp_path))
    (errors / "node2-9.error.json").write_text(
        '{"message": {"message": "RendezvousTimeoutError: "}}')
    assert rendezvous_timed_out(str(tmp_path))


_CHILD = """
import signal, sys, time
def record(signum, _frame):
    open(sys.argv[1], "w").write(signal.Signals(signum).name)
    sys.exit(0)
for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, record)
open(sys.argv[1] + ".ready", "w").close()
time.sleep(60)
"""
_LAUNCHER = """
import os, sys
from launcher.engines.group import Command, run_group
sys.exit(run_group([Command([sys.executable, "-c", sys.argv[1], sys.argv[2]], dict(os.environ))], grace=5))
"""


def test_sigint_sighup_and_sigterm_reach_the_job_alike(tmp_path):
    """The launcher relays each stop signal to its processes' group as it came (torchrun relays INT,
    TERM and HUP to its ranks, which commit a checkpoint), and exits 128 + that signal."""
    import signal
    import subprocess
    import sys

    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        seen = tmp_path / f"seen-{signum}"
        launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, _CHILD, str(seen)])
        deadline = time.monotonic() + 30
        while not (tmp_path / f"seen-{signum}.ready").exists():
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.05)
        launcher.send_signal(signum)
        assert launcher.wait(timeout=30) == 128 + signum
        assert seen.read_text() == signal.Signals(signum).name
