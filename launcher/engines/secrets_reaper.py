"""Removes the secrets file of a hostfile job once the launcher that wrote it is gone, however it
ended: `python -m launcher.engines.secrets_reaper PID PATH INODE`.

The launcher deletes the file itself when the job ends; this detached process covers the launcher
being killed outright (SIGKILL, the OOM killer), which no `finally` survives. It waits on a pidfd
(the kernel wakes it when the process ends; polling where pidfds are missing) and removes the file
only if it is still the one the launcher wrote (the same inode), never a newer run's. Standard
library only.
"""

from __future__ import annotations

import os
import select
import sys
import time


def wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd: poll
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            time.sleep(0.5)
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def remove_if_same(path: str, inode: int) -> bool:
    try:
        if os.stat(path).st_ino != inode:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def main(argv: list[str]) -> int:
    pid, path, inode = int(argv[0]), argv[1], int(argv[2])
    wait_for_exit(pid)
    remove_if_same(path, inode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
