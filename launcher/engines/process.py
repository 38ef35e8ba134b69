"""Run a launch plan on its engine: the processes, the secrets file of remote nodes, the lock."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher.engines.commands import LaunchView
from launcher.engines.group import GRACE_SECONDS, Command, run_group
from launcher.engines.registry import engine_named


def execute(plan: LaunchView, secrets: Mapping[str, str] | None = None, grace: float = GRACE_SECONDS,
            started_at: float | None = None, keep_fds: Sequence[int | None] = (), monitor=None) -> int:
    """Run the plan; its exit status. keep_fds: descriptors every started process holds open too
    (the run directory's lock, so it stays held while they stop, even if the launcher dies)."""
    engine = engine_named(plan.engine)
    # The start time travels in the environment (not the plan, which is pure data) so the worker
    # can report launch overhead: `launcher run` to the first optimizer step.
    started = {"LAUNCHER_START_TIME": repr(started_at or time.time())}
    fds = tuple(fd for fd in keep_fds if fd is not None)
    commands = [Command(list(p.argv), {**os.environ, **p.env, **started}, p.keep_stdin, engine.watches_host_exits,
                        fds) for p in plan.processes]
    bar = _live_bar(plan.run_dir)
    try:
        with _secrets_file(plan.secrets_file, secrets or {}):
            return run_group(commands, grace, engine.remote_stopper(plan), engine.failure_reporter(plan),
                             engine.stop_signal, bar, monitor)
    finally:
        if bar:
            bar.stop()


def _live_bar(run_dir: str):
    """A progress bar under the output, on a terminal only (engines/live_bar.py)."""
    from launcher.engines import live_bar
    from launcher.rundir.layout import RunDir

    if not live_bar.wanted():
        return None
    bar = live_bar.LiveBar(RunDir(run_dir).progress)
    bar.start()
    return bar


@contextlib.contextmanager
def _secrets_file(path: str, secrets: Mapping[str, str]):
    """Secrets for remote ranks: a 0600 file on the shared run directory, gone when the job ends,
    and gone when the launcher is killed outright too (a detached reaper waits for its death)."""
    if not path:
        yield
        return
    target = Path(path)
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(dict(secrets), handle)
    reaper = subprocess.Popen([sys.executable, "-m", "launcher.engines.secrets_reaper", str(os.getpid()), str(target),
                               str(target.stat().st_ino)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        yield
    finally:
        target.unlink(missing_ok=True)
        reaper.kill()  # its work is done; no stray process per job
        reaper.wait()
