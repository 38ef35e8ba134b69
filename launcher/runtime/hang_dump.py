"""Each node's answer to the hang watch (engines/hang_watch.py): a thread in torchrun's agent
(runtime/agent.py) that, when the watch asks, reads every process the agent started (the ranks
and their data-loader workers) from outside: its state (running, sleeping, stopped, zombie) from
/proc, its rank from its environment, and every thread's Python stack with py-spy (which reads
another process's memory without stopping it, so a stopped or wedged rank is read too). It answers
in RUN_DIR/logs/hang/node-<host>-<pid>.json; the stacks stay there with the verdict.

When the watch has judged (RUN_DIR/logs/hang/end.json), the thread kills what the agent started.
The launcher is stopping the job at the same moment, but a SIGTERM cannot end it in time: a stopped
rank does not run until SIGCONT, the others sit in a collective that never completes (no checkpoint
can be made), and torchrun waits 30 s before its own SIGKILL, each node's guard 60 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from launcher.rundir.heartbeats import HANG_END, HANG_REQUEST, node_answer
from launcher.rundir.layout import RunDir
from launcher.rundir.record import write_atomic

POLL_S = 1.0
END_AFTER_S = 2.0  # the launcher's stop reaches torchrun first, so the agent does not restart the ranks
PY_SPY_TIMEOUT_S = 15.0
STATES = {"R": "running", "S": "sleeping", "D": "in uninterruptible I/O", "T": "stopped", "t": "stopped (traced)",
          "Z": "zombie", "X": "dead", "I": "idle"}


def start_responder(run_dir: str) -> None:
    threading.Thread(target=_respond, args=(Path(run_dir),), daemon=True, name="hang-dump").start()


def _respond(run_dir: Path) -> None:
    hang = RunDir(run_dir).hang
    answered = None
    while True:
        time.sleep(POLL_S)
        asked = _asked(hang / HANG_REQUEST)
        if asked is None:
            continue
        if asked != answered:
            answered = asked
            _answer(hang, asked)
        elif _asked(hang / HANG_END) == asked:
            time.sleep(END_AFTER_S)
            _kill_all(descendants(os.getpid()))
            return


def _asked(path: Path) -> float | None:
    """The `time` of a request (or of the end that answers it); None when there is none."""
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _answer(hang: Path, asked: float) -> None:
    answer = {"asked": asked, "host": socket.gethostname(), "agent_pid": os.getpid(),
              "processes": [describe(pid) for pid in descendants(os.getpid())]}
    try:
        write_atomic(node_answer(hang, socket.gethostname(), os.getpid()), json.dumps(answer, indent=1))
    except OSError:
        pass  # a full or gone run directory: the watch judges from the heartbeats alone


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # gone already


def descendants(root: int) -> list[int]:
    """Every process below `root`, parents before children (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _stat(int(entry))
            if parent:
                children.setdefault(int(parent[1]), []).append(int(entry))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _stat(pid: int) -> tuple[str, str] | None:
    """(state letter, parent pid) from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return (fields[0], fields[1]) if len(fields) > 1 else None


def describe(pid: int) -> dict:
    stat = _stat(pid)
    environ = _environ(pid)
    return {"pid": pid, "parent": int(stat[1]) if stat else 0, "state": stat[0] if stat else "?",
            "state_text": STATES.get(stat[0], stat[0]) if stat else "gone",
            "rank": _int(environ.get("RANK")), "local_rank": _int(environ.get("LOCAL_RANK")),
            "stack": py_spy_dump(pid)}


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs
            if k in (b"RANK", b"LOCAL_RANK")}


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def py_spy_dump(pid: int) -> str:
    """Every thread's Python stack, read from outside (py-spy --nonblocking: the process is not
    stopped, so a wedged one is read too); "" when py-spy is missing or the read failed."""
    binary = shutil.which("py-spy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if not binary:
        return ""
    try:
        done = subprocess.run([binary, "dump", "--nonblocking", "--pid", str(pid)], capture_output=True, text=True,
                              timeout=PY_SPY_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""
