"""A one-line live progress bar under the job's output, when the launcher runs on a terminal.

Rank 0 prints a step line per log interval; between them a long interval shows nothing. Rank 0
also writes its step to `progress.json` in the run directory at most once a second
(runtime/metrics.py: StepProgress), and the launcher draws it here as the last line of the
terminal: `[#########.........] 40/150 27% | 3.1 steps/s | eta 35s`.

The job's processes write to pipes that the launcher copies line by line: each line clears the
bar, is written whole, and the bar is drawn again under it, so output and bar never mix. Only on
a terminal (stdout and stderr both): Slurm logs, pipes and files get the plain lines, unchanged.
LAUNCHER_PROGRESS_BAR=0 turns it off.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import IO

from launcher.durations import duration

CLEAR_LINE = "\r\x1b[K"
REDRAW_EVERY_S = 0.5


def wanted(stdout: IO | None = None, stderr: IO | None = None) -> bool:
    if os.environ.get("LAUNCHER_PROGRESS_BAR", "") == "0":
        return False
    streams = (stdout or sys.stdout, stderr or sys.stderr)
    return all(getattr(s, "isatty", lambda: False)() for s in streams) and os.environ.get("TERM") != "dumb"


def render(step: int, total: int, steps_per_s: float | None, width: int) -> str:
    """The bar's text for `width` columns."""
    fraction = min(1.0, step / total) if total else 0.0
    tail = f" {step}/{total} {fraction:4.0%}"
    if steps_per_s:
        tail += f" | {steps_per_s:.3g} steps/s"
        if step < total:
            tail += f" | eta {duration((total - step) / steps_per_s)}"
    cells = max(10, min(40, width - len(tail) - 3))
    filled = int(round(cells * fraction))
    return ("[" + "#" * filled + "." * (cells - filled) + "]" + tail)[: max(1, width - 1)]


class LiveBar:
    """Copies the job's output above a bar redrawn from the run directory's progress file."""

    def __init__(self, progress_file: Path, out: IO = sys.stdout, err: IO = sys.stderr) -> None:
        self.progress_file, self.out, self.err = progress_file, out, err
        self._lock = threading.Lock()
        self._text = ""
        self._stopped = threading.Event()
        self._rate: tuple[float, int] | None = None  # (rank 0's time, step) of the first progress seen
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._stopped.set()
        self._ticker.join(timeout=2)
        with self._lock:
            self._erase()
            self.out.flush()

    def copy(self, stream: IO[bytes], to_stderr: bool) -> threading.Thread:
        """A thread copying `stream`'s lines (a child's pipe) above the bar."""
        thread = threading.Thread(target=self._copy, args=(stream, to_stderr), daemon=True)
        thread.start()
        return thread

    def write_line(self, raw: bytes, to_stderr: bool = False) -> None:
        target = self.err if to_stderr else self.out
        with self._lock:
            self._erase()
            self.out.flush()
            target.buffer.write(raw if raw.endswith(b"\n") else raw + b"\n")
            target.flush()
            self._draw()

    def _copy(self, stream: IO[bytes], to_stderr: bool) -> None:
        for raw in iter(stream.readline, b""):
            self.write_line(raw, to_stderr)
        stream.close()

    def _tick(self) -> None:
        while not self._stopped.wait(REDRAW_EVERY_S):
            progress = self._read()
            if progress is None:
                continue
            step, total, written = progress
            if self._rate is None or step < self._rate[1]:
                self._rate = (written, step)  # the first step seen (a resumed run starts past 0)
            since, first = self._rate
            # Steps over rank 0's own clock between two of its writes: steady, whatever the polling.
            rate = (step - first) / (written - since) if step > first and written > since else None
            text = render(step, total, rate, shutil.get_terminal_size((100, 24)).columns)
            with self._lock:
                if text != self._text:
                    self._text = text
                    self._draw()

    def _read(self) -> tuple[int, int, float] | None:
        try:
            data = json.loads(self.progress_file.read_text(encoding="utf-8"))
            return int(data["step"]), int(data["total"]), float(data["time"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not written yet, or being replaced

    def _erase(self) -> None:
        if self._text:
            self.out.write(CLEAR_LINE)

    def _draw(self) -> None:
        if self._text:
            self.out.write(CLEAR_LINE + self._text)
            self.out.flush()
