"""The ranks' heartbeat files as data: their format and their reading (standard library only).
The ranks write them (runtime/heartbeat.py); the launcher's hang watch reads them
(engines/hang_watch.py), from outside every rank."""

from __future__ import annotations

import struct
from pathlib import Path

STARTING, TRAINING, EVALUATING, SAVING, DONE = range(5)
PHASES = ("starting", "training", "evaluating", "saving", "done")
FORMAT = "<qii"  # the step the rank works on, its phase, its pid
SIZE = struct.calcsize(FORMAT)


HANG_REQUEST = "request.json"  # in RUN_DIR/logs/hang/: the watch asks every node's agent for its stacks
HANG_END = "end.json"  # then, judged: every node's agent ends its ranks (a hung group saves no checkpoint)


def node_answer(directory: Path, host: str, pid: int) -> Path:
    """Where one node's torchrun agent writes its processes' stacks and states."""
    return directory / f"node-{host}-{pid}.json"


def heartbeat_file(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank}"


def read_heartbeat(path: Path) -> tuple[int, int, int] | None:
    """(step, phase, pid) of a rank's file; None when it is missing or short (not written yet)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(SIZE)
    except OSError:
        return None
    return struct.unpack(FORMAT, data) if len(data) == SIZE else None
