"""One `launcher run` per run directory: an flock on RUN_DIR/.lock.

The kernel drops the lock when the last process holding the open file ends, however it ends
(kill -9 included), so a crash never leaves a stale lock behind. The launcher passes the
descriptor to the processes it starts (torchrun, ssh, pdsh, srun): while they stop and commit a
checkpoint after the launcher itself was killed, the directory stays locked. The file keeps
who holds it (pid, host, time, command) for the next one's error message; it is never deleted
(deleting a lock file lets two holders lock two different files).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path


class LockHeld(Exception):
    def __init__(self, path: Path, holder: dict) -> None:
        self.path, self.holder = path, holder
        super().__init__(describe_holder(holder))


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process (it left no details)"
    since = holder.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


class RunLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, orphan_wait_s: float = 0.0, on_wait=None) -> None:
        """Take the lock or raise LockHeld naming the holder. Creates the file (not its directory).

        When the holder is a launcher on this host that is gone, the lock is held by the processes
        it started, which are stopping (committing a checkpoint); wait up to orphan_wait_s for
        them, calling on_wait(holder) once, rather than refusing a restart seconds too early."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(self.path)
                if deadline is None and orphan_wait_s > 0 and _is_gone(holder):
                    deadline = time.monotonic() + orphan_wait_s
                    if on_wait:
                        on_wait(holder)
                if deadline is None or time.monotonic() > deadline:
                    os.close(fd)
                    raise LockHeld(self.path, holder) from None
                time.sleep(0.2)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:3]))}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing our last descriptor drops the flock
            self.fd = None


def _is_gone(holder: dict) -> bool:
    """The holder was a process on this host that no longer exists."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def read_holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_locked(path: Path) -> bool:
    """True when a live process holds the lock (a probe: takes it and drops it at once otherwise)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
