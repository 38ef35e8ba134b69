"""Checkpoints that survive a kill at any instant.

Commit protocol (every rank takes part):
  1. rank 0 empties `.tmp-step-N/`; barrier
  2. every rank writes its files there (backend shards + its RNG state); fsync; barrier
  3. rank 0 writes manifest.json (every file and its size), fsyncs, renames the directory to
     `step-N/`, then replaces the `latest` pointer (write temp + rename), then deletes checkpoints
     beyond keep_last (only now that the new one is committed); barrier
A kill before the rename leaves only a `.tmp-*` directory, which resume never reads. A committed
directory always has a manifest, and loading checks every file against it, so a zero-byte or
truncated shard is a hard error, never a silent fresh start.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

POINTER = "latest"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class Restored:
    step: int
    samples: int
    meta: dict


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def find_resume_dir(root: Path, resume: str) -> Path | None:
    """The directory to resume from, None for a fresh start, CheckpointError when unusable."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if path.is_dir() and (path / POINTER).exists() and not (path / MANIFEST).exists():
            return find_resume_dir(path, "auto")  # a checkpoints/ root was given
        if not (path / MANIFEST).is_file():
            raise CheckpointError(f"checkpoint.resume={resume}: no committed checkpoint there "
                                  f"(no {MANIFEST}); refusing to start from scratch")
        return path
    pointer = root / POINTER
    if pointer.exists():
        name = pointer.read_text(encoding="utf-8").strip()
        if not _STEP_DIR.match(name):
            raise CheckpointError(f"{pointer} is corrupt ({name!r}); refusing to start from scratch. "
                                  "Fix it to name a step-N directory, or set checkpoint.resume=never")
        target = root / name
        if not (target / MANIFEST).is_file():
            raise CheckpointError(f"{pointer} names {name}, which is missing or incomplete; "
                                  "set checkpoint.resume to an older step-N directory, or never")
        return target
    committed = sorted(p for p in root.glob("step-*") if _STEP_DIR.match(p.name) and (p / MANIFEST).is_file())
    # A kill between the rename and the pointer update leaves a committed directory and no pointer.
    return committed[-1] if committed else None


def verify(directory: Path) -> dict:
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    for relative, size in manifest["files"].items():
        path = directory / relative
        if not path.is_file():
            raise CheckpointError(f"{directory}: {relative} is missing")
        actual = path.stat().st_size
        if actual != size or size == 0:
            raise CheckpointError(f"{directory}: {relative} has {actual} bytes, manifest says {size}")
    return manifest["meta"]


class CheckpointManager:
    def __init__(self, root: str, keep_last: int, rank: int, barrier) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank
        self.barrier = barrier

    def save(self, step: int, meta: dict, write_shards) -> Path:
        """`write_shards(tmp_dir)` is called on every rank; returns the committed directory."""
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        final = self.root / step_dir_name(step)
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        self.barrier()
        write_shards(str(tmp))
        save_rank_state(tmp, self.rank)
        _fsync_tree(tmp, self.rank)
        self.barrier()
        if self.rank == 0:
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            _write_atomic(tmp / MANIFEST, json.dumps({"meta": meta, "files": files}, indent=1))
            if final.exists():  # an earlier attempt committed this step already; ours replaces it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _write_atomic(self.root / POINTER, final.name + "\n")
            _fsync_dir(self.root)
            self._prune(keep=final.name)
        self.barrier()
        return final

    def _prune(self, keep: str) -> None:
        committed = sorted(p.name for p in self.root.glob("step-*") if _STEP_DIR.match(p.name))
        for name in committed[: max(0, len(committed) - self.keep_last)]:
            if name != keep:
                shutil.rmtree(self.root / name, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)


def save_rank_state(directory: Path, rank: int) -> None:
    import torch

    state = {
        "python": list(_tupled_to_lists(random.getstate())),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save(state, directory / f"rng-rank{rank:05d}.pt")


def load_rank_state(directory: Path, rank: int) -> bool:
    """Restore this rank's RNG; False (caller warns) when the file is absent, e.g. new world size."""
    import torch

    path = directory / f"rng-rank{rank:05d}.pt"
    if not path.is_file():
        return False
    try:
        state = torch.load(path, weights_only=True)
        version, internal, gauss = state["python"]
    except Exception as exc:  # noqa: BLE001 - any unreadable RNG file is the same hard error
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); the data order "
                              "would silently change. Resume from an earlier checkpoint (resume: PATH)") from None
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    return True


def _tupled_to_lists(value):
    version, internal, gauss = value
    return version, list(internal), gauss


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_tree(directory: Path, rank: int) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # another rank's temp file, renamed meanwhile
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
