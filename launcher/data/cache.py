"""Preprocessing caches: built once per node into a temporary directory, renamed when complete.

A kill mid-build leaves only a `.tmp-*` directory, never a half cache that a later run trusts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def cache_root(configured: str) -> Path:
    """data.cache_dir, else the launcher's cache root ($LAUNCHER_CACHE_DIR, else ~/.cache/launcher)."""
    from launcher.plan.cache import cache_root as launcher_cache_root

    return Path(configured) if configured else launcher_cache_root()


def files_key(settings: dict, files: list[tuple[Path, int]]) -> str:
    """A cache key of the settings and each (file, label): path, size and mtime, so a changed file
    gets a new cache."""
    digest = hashlib.sha256(json.dumps(settings).encode())
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_once(cache: Path, label: str, build: Callable[[Path], dict]) -> None:
    """Run `build(tmp_dir) -> summary` unless `cache` is complete; commit it with one rename."""
    if (cache / "done").exists():
        print(f"{label}: reusing preprocessed data in {cache}", flush=True)
        return
    print(f"{label}: preprocessing into {cache}", flush=True)
    tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = build(tmp)
        (tmp / "done").write_text(json.dumps(summary))
    except BaseException:  # a bad input file, a full disk, a kill by signal: no half store left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, cache)
    except OSError:  # another node's leader committed the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
