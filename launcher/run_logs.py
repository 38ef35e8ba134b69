"""`launcher logs RUN_DIR` for a run started with `launcher run`: one rank's own output, every
attempt in order, from the files torchrun writes under logs/torchrun/ (they always keep
everything, whatever the console showed). Standard library only.

torchrun's layout: logs/torchrun/<rendezvous id>_<random>/attempt_<n>/<local rank>/{stdout,stderr}.log,
one <rendezvous id>_<random> per launch (a resume is a new launch), one attempt_<n> per restart.
"""

from __future__ import annotations

import re
from pathlib import Path

from launcher.rundir.layout import RunDir

_ATTEMPT = re.compile(r"attempt_(\d+)")


def rank_log_files(run_dir: Path, local_rank: int = 0) -> list[tuple[str, Path]]:
    """(title, path) for each non-empty stdout/stderr log of the rank, oldest launch first."""
    root = RunDir(run_dir).torchrun_logs
    launches = sorted((p for p in root.glob("*") if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))
    out = []
    for number, launch in enumerate(launches, start=1):
        attempts = sorted((p for p in launch.glob("attempt_*") if _ATTEMPT.fullmatch(p.name)),
                          key=lambda p: int(p.name.split("_")[1]))
        for attempt in attempts:
            for stream in ("stdout", "stderr"):
                path = attempt / str(local_rank) / f"{stream}.log"
                if path.is_file() and path.stat().st_size:
                    title = f"launch {number}, {attempt.name.replace('_', ' ')}, rank {local_rank} {stream}"
                    out.append((title, path))
    return out
