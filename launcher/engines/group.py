"""A group of processes started together and stopped together: signals in, exit status out.

Each command gets its own process group so that a signal to the launcher reaches torchrun and,
through torchrun, every rank; after a grace period anything left is killed. No orphans. The
engine says which signal its processes get (Engine.stop_signal) and how remote nodes are asked
to stop (Engine.remote_stopper).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launcher.engines.live_bar import LiveBar

GRACE_SECONDS = 30.0
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
# Exit statuses of a job stopped on request (128 + the signal), as opposed to a failed one.
STOP_STATUSES = frozenset(128 + s for s in _FORWARDED)


def exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # a child killed by signal N reads as -N


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str]
    keep_stdin: bool = False
    # pdsh: watch its stderr for the per-host exit codes it reports (one process covers many hosts).
    pdsh_host_exits: bool = False
    pass_fds: tuple[int, ...] = ()  # inherited by the process (and kept open by it)


@dataclass
class GroupView:
    """What a failure report may look at while the other processes are still running."""

    procs: list[subprocess.Popen]
    host_exits: list[dict[str, int]]  # per command: host -> exit code, as pdsh reported it
    watchers: dict[int, threading.Thread]  # command index -> its stderr copier

    def codes(self) -> list[int | None]:
        codes = [p.poll() for p in self.procs]
        for index, watcher in self.watchers.items():
            if codes[index] is not None:
                watcher.join(timeout=2)  # an exited process's last stderr lines are read in full
        return codes


_PDSH_EXIT = re.compile(r"^pdsh@[^:]*: ([^:\s]+): ssh exited with exit code (\d+)")


def _to_stderr(raw: bytes) -> None:
    sys.stderr.buffer.write(raw)
    sys.stderr.buffer.flush()


def _copy_pdsh_stderr(stream, host_exits: dict[str, int], write: Callable[[bytes], None] = _to_stderr) -> None:
    """Pass pdsh's stderr through unchanged, noting the hosts it reports as failed."""
    for raw in iter(stream.readline, b""):
        write(raw)
        found = _PDSH_EXIT.match(raw.decode("utf-8", "replace"))
        if found:
            host_exits[found.group(1)] = int(found.group(2))
    stream.close()


def run_group(commands: Sequence[Command], grace: float = GRACE_SECONDS,
              stop_remote: Callable[[], None] | None = None,
              on_failure: Callable[[int, GroupView], None] | None = None,
              stop_signal: Callable[[int], int] = lambda signum: signum, bar: LiveBar | None = None,
              monitor=None) -> int:
    """Run all commands; the first failure stops the rest. Returns the job's exit status.
    on_failure(index of the first failed command, view) runs before anything is stopped.
    bar: the processes' output is copied above this live progress bar (a terminal only).
    monitor: checked every turn (engines/hang_watch.HangMonitor); a status from it ends the job."""
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in _FORWARDED}
    view = GroupView([], [], {})
    procs = view.procs
    copiers: list[threading.Thread] = []
    arm = _parent_death_signal()
    try:
        for command in commands:
            stdin = subprocess.PIPE if command.keep_stdin else subprocess.DEVNULL
            stderr = subprocess.PIPE if command.pdsh_host_exits or bar else None
            stdout = subprocess.PIPE if bar else None
            procs.append(subprocess.Popen(command.argv, env=command.env, stdin=stdin, stdout=stdout, stderr=stderr,
                                          start_new_session=True, preexec_fn=arm, pass_fds=command.pass_fds))
            view.host_exits.append({})
            if bar:
                copiers.append(bar.copy(procs[-1].stdout, to_stderr=False))
            if command.pdsh_host_exits:
                write = (lambda raw: bar.write_line(raw, to_stderr=True)) if bar else _to_stderr
                watcher = threading.Thread(target=_copy_pdsh_stderr, daemon=True,
                                           args=(procs[-1].stderr, view.host_exits[-1], write))
                watcher.start()
                view.watchers[len(procs) - 1] = watcher
            elif bar:
                copiers.append(bar.copy(procs[-1].stderr, to_stderr=True))
        status = _wait(view, received, grace, stop_remote, on_failure, stop_signal, monitor)
    finally:
        # After a signal or a failure alike: ask remote guards to stop and wait for their checkpoint.
        if stop_remote and any(p.poll() is None for p in procs):
            _stop_remote_gracefully(procs, stop_remote, grace)
        for proc in procs:
            _stop(proc, signal.SIGTERM, grace)
        for s, handler in previous.items():
            signal.signal(s, handler)
        for watcher in [*view.watchers.values(), *copiers]:
            watcher.join(timeout=5)
    return status


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec function: the child gets SIGTERM if the launcher dies without cleaning up (SIGKILL,
    the OOM killer). torchrun turns SIGTERM into a checkpoint and a clean stop; pdsh dies and its
    ssh connections close, which the remote guards read as EOF. The children have their own
    session (no terminal signals) but are never orphans. Resolved here, in the parent: the child
    between fork and exec runs only the C call (no imports while other threads may hold locks)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    launcher_pid = os.getpid()
    pr_set_pdeathsig = 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != launcher_pid:  # the launcher died before the call took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _stop_remote_gracefully(procs: list[subprocess.Popen], stop_remote: Callable[[], None], grace: float) -> None:
    try:
        stop_remote()
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"launcher: could not reach the remote guards ({exc}); closing the connections", file=sys.stderr)
    _wait_all(procs, grace)


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)


def _wait(view: GroupView, received: list[int], grace: float, stop_remote: Callable[[], None] | None,
          on_failure: Callable[[int, GroupView], None] | None, stop_signal: Callable[[int], int],
          monitor=None) -> int:
    procs = view.procs
    while True:
        verdict = monitor.check() if monitor is not None else None
        if verdict is not None:  # a hang: run_group's cleanup stops every process
            return verdict
        if received:
            signum = received[0]
            print(f"launcher: received {signal.Signals(signum).name}, stopping all processes", file=sys.stderr)
            for proc in procs:
                if proc.stdin:
                    _close(proc.stdin)  # ssh: the remote guard reads EOF and stops torchrun gracefully
                elif not stop_remote:
                    signal_group(proc, stop_signal(signum))  # what this engine's process turns into a stop
            if not stop_remote:  # with a remote stopper, run_group's cleanup asks and waits
                _wait_all(procs, grace)
            return 128 + signum
        codes = [p.poll() for p in procs]
        failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            if on_failure:
                on_failure(failed[0], view)
            return exit_code(codes[failed[0]])
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def _close(stream) -> None:
    try:
        stream.close()
    except OSError:
        pass


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen, signum: int, grace: float) -> None:
    """Terminate the whole group, then kill it after the grace period."""
    if proc.poll() is None:
        if proc.stdin:
            _close(proc.stdin)
        signal_group(proc, signum)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    signal_group(proc, signal.SIGKILL)  # stragglers that left torchrun's control
    proc.wait()
