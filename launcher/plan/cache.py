"""The launcher's cache directory, and one JSON file written into it whole or not at all.

Checks the launcher makes before a job starts (DeepSpeed's schema verdicts, the memory trace)
keep their answers here; the ranks' preprocessing caches live under the same root
(launcher/data/cache.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def cache_root() -> Path:
    """$LAUNCHER_CACHE_DIR, else ~/.cache/launcher."""
    return Path(os.environ.get("LAUNCHER_CACHE_DIR") or Path.home() / ".cache" / "launcher")


def remember(path: Path, value) -> None:
    """Write value as JSON to path through a temporary file, so a reader never sees half of it. A
    cache that cannot be written costs the next check its work again, nothing more."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(value), encoding="utf-8")
        partial.replace(path)
    except OSError:
        pass
