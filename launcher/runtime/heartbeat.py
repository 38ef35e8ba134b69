"""This rank's progress for the launcher's hang watch (engines/hang_watch.py): 16 bytes in
RUN_DIR/logs/heartbeat/rank-N (rundir/heartbeats.py), mapped into memory, holding the step this
rank works on and what it does. A beat is one store into a page the kernel already maps: no system
call, no host sync, under a microsecond. The watch reads the file from outside the rank, so a
stopped, wedged or busy process is seen as one whose step does not move.
"""

from __future__ import annotations

import mmap
import os
import struct

from launcher.rundir.heartbeats import DONE, FORMAT, SIZE, STARTING, TRAINING, heartbeat_file
from launcher.rundir.layout import RunDir


class Heartbeat:
    def __init__(self, run_dir: str, rank: int) -> None:
        path = heartbeat_file(RunDir(run_dir).heartbeats, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        partial.write_bytes(struct.pack(FORMAT, 0, STARTING, os.getpid()))
        partial.replace(path)  # the watch never reads a short file
        self._file = open(path, "r+b")  # noqa: SIM115 - mapped for the rank's life, closed in close()
        self._map = mmap.mmap(self._file.fileno(), SIZE)
        self._pid = os.getpid()
        self.step = 0

    def beat(self, step: int, phase: int = TRAINING) -> None:
        """This rank now works on `step`, doing `phase`."""
        self.step = step
        struct.pack_into(FORMAT, self._map, 0, step, phase, self._pid)

    def phase(self, phase: int) -> None:
        self.beat(self.step, phase)

    def close(self) -> None:
        self.phase(DONE)
        self._map.close()
        self._file.close()
