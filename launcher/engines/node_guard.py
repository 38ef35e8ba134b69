"""Runs torchrun on a remote node and ties its life to the launcher's.

`python -m launcher.engines.node_guard [--watch-stdin] [--secrets-file F] -- torchrun ...`

Why a guard: over ssh/pdsh a remote command gets no signal when the launcher or the connection
goes away, so a killed launcher would leave ranks running (the orphans DeepSpeed cleans up with
`pkill -f`). The guard starts torchrun in its own process group and stops it (SIGTERM, then
SIGKILL after a grace period) when
- its stdin reaches EOF (`--watch-stdin`: ssh/pdsh close it when the launcher side dies), or
- it gets SIGTERM/SIGINT/SIGHUP, or SIGUSR1 (Slurm's pre-timeout signal, relayed by srun); it
  forwards SIGTERM, which torchrun relays to every rank and the ranks turn into a checkpoint.
torchrun itself would die on SIGUSR1 without telling its ranks, hence the translation.
Its exit status is torchrun's. Standard library only (what it imports too): it starts before anything heavy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from launcher.engines import threads
from launcher.engines.group import exit_code
from launcher.rundir.layout import RunDir

GRACE_SECONDS = float(os.environ.get("LAUNCHER_GRACE_SECONDS", "60"))


def main(argv: list[str]) -> int:
    watch_stdin = False
    secrets_file = ""
    while argv and argv[0] != "--":
        option = argv.pop(0)
        if option == "--watch-stdin":
            watch_stdin = True
        elif option == "--secrets-file":
            secrets_file = argv.pop(0)
        else:
            print(f"node_guard: unknown option {option}", file=sys.stderr)
            return 2
    command = argv[1:]
    env = dict(os.environ)
    if secrets_file:
        env.update(_read_secrets(secrets_file))
    env.update(_agent_error_file(env.get("LAUNCHER_RUN_DIR", "")))
    env = threads.with_thread_default(env, threads.nproc_from_torchrun(command))  # this node's cores
    child = subprocess.Popen(command, env=env, start_new_session=True)
    stop = threading.Event()

    def request_stop(*_args) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, request_stop)
    if watch_stdin:
        threading.Thread(target=_wait_for_eof, args=(request_stop,), daemon=True).start()
    while child.poll() is None and not stop.is_set():
        stop.wait(0.2)
    if child.poll() is None:
        _stop_group(child)
    return exit_code(child.wait())


def _read_secrets(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return {str(k): str(v) for k, v in json.load(handle).items()}
    except (OSError, ValueError) as exc:
        print(f"node_guard: cannot read the secrets file ({exc}); continuing without secrets", file=sys.stderr)
        return {}


def _agent_error_file(run_dir: str) -> dict[str, str]:
    """Where torchrun's agent records its own fatal error (a rendezvous timeout, say): the launcher
    reads these to tell "a node never joined" from other failures. Workers get their own files."""
    if not run_dir:
        return {}
    folder = RunDir(run_dir).agent_errors
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return {}
    return {"TORCHELASTIC_ERROR_FILE": str(folder / f"{socket.gethostname()}-{os.getpid()}.error.json")}


def _wait_for_eof(request_stop) -> None:
    try:
        while os.read(sys.stdin.fileno(), 4096):
            pass
    except OSError:
        pass
    request_stop()


def _stop_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
