"""Start the plan's commands and own their lifetime: signals in, exit status out.

Each command gets its own process group so that a signal to the launcher reaches torchrun and,
through torchrun, every rank; after a grace period anything left is killed. No orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from launcher.plan.launch import LaunchPlan

GRACE_SECONDS = 30.0
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def execute(plan: LaunchPlan, grace: float = GRACE_SECONDS) -> int:
    # The start time travels in the environment (not the plan, which is pure data) so the worker
    # can report launch overhead: `launcher run` to the first optimizer step.
    started = {"LAUNCHER_START_TIME": repr(time.time())}
    commands = [(node.full_argv(), {**os.environ, **node.env, **started}) for node in plan.nodes]
    return run_group(commands, grace)


def run_group(commands: Sequence[tuple[list[str], dict[str, str]]], grace: float = GRACE_SECONDS) -> int:
    """Run all commands; the first failure stops the rest. Returns the job's exit status."""
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in _FORWARDED}
    procs: list[subprocess.Popen] = []
    try:
        for argv, env in commands:
            procs.append(subprocess.Popen(argv, env=env, start_new_session=True))
        status = _wait(procs, received, grace)
    finally:
        for proc in procs:
            _stop(proc, signal.SIGTERM, grace)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return status


def _wait(procs: list[subprocess.Popen], received: list[int], grace: float) -> int:
    while True:
        if received:
            signum = received[0]
            print(f"launcher: received {signal.Signals(signum).name}, stopping all processes", file=sys.stderr)
            for proc in procs:
                _signal_group(proc, signum)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.1)
            return 128 + signum
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            return _exit_code(failed[0])
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # a child killed by signal N reads as -N


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen, signum: int, grace: float) -> None:
    """Terminate the whole group, then kill it after the grace period."""
    if proc.poll() is None:
        _signal_group(proc, signum)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc, signal.SIGKILL)  # stragglers that left torchrun's control
    proc.wait()
