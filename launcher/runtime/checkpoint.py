"""Checkpoints that survive a kill at any instant, and prove their content on resume.

Commit protocol (every rank takes part):
  1. rank 0 empties `.tmp-step-N/`; barrier
  2. every rank writes its files there (backend shards + its RNG state), hashing each file as it
     is written (xxh3-128, in the same pass: no second read of a large shard); fsync; barrier
  3. rank 0 writes manifest.json (every file, its size and checksum), fsyncs, renames the
     directory to `step-N/`, then replaces the `latest` pointer (write temp + rename), then deletes
     checkpoints beyond keep_last (only now that the new one is committed); barrier
A kill before the rename leaves only a `.tmp-*` directory, which resume never reads. A committed
directory always has a manifest, and loading checks every file against it (size and checksum), so
a truncated, zeroed or bit-flipped shard is a hard error naming the file, never a silent resume.
The functions that read checkpoints use the standard library (and xxhash) only: the CLI checks a
run's checkpoints before it starts anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

POINTER = "latest"
MANIFEST = "manifest.json"
CHECKSUM = "xxh3_128"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")  # zero-padded to 8 digits, longer past 99,999,999
_DIGESTS = ".digests-rank"  # per-rank checksums of the files it wrote, merged into the manifest
_HINT = "\n      HINT: "


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class Restored:
    step: int
    samples: int
    meta: dict


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def committed_steps(root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every committed checkpoint under root, oldest first (by number)."""
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), p) for p in entries if (m := _STEP_DIR.match(p.name)) and (p / MANIFEST).is_file()]
    return sorted(found)


def read_pointer(root: Path) -> str | None:
    """The step directory `latest` names, None without a pointer, CheckpointError when unusable."""
    pointer = root / POINTER
    if not os.path.lexists(pointer):
        return None
    problem = None
    if pointer.is_symlink() or not pointer.is_file():
        problem = "is not a plain file (a link or a directory)"
    else:
        try:
            data = pointer.read_bytes()[:256]
            name = data.decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as error:
            problem = f"is unreadable ({type(error).__name__})"
        else:
            if not _STEP_DIR.match(name):
                problem = f"is corrupt ({name[:40]!r})"
    if problem:
        raise CheckpointError(f"{pointer} {problem}; it should name the newest step-N directory. Refusing to "
                              f"start from scratch or to guess{_HINT}write the newest committed step-N directory's "
                              "name into it, set checkpoint.resume to a step-N directory, or start a new run")
    return name


def find_resume_dir(root: Path, resume: str) -> Path | None:
    """The directory to resume from, None for a fresh start, CheckpointError when unusable."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if path.is_dir() and os.path.lexists(path / POINTER) and not (path / MANIFEST).exists():
            return find_resume_dir(path, "auto")  # a checkpoints/ root was given
        if not (path / MANIFEST).is_file():
            raise CheckpointError(f"checkpoint.resume={resume}: no committed checkpoint there "
                                  f"(no {MANIFEST}); refusing to start from scratch{_HINT}give a step-N directory "
                                  "or a checkpoints/ directory, or checkpoint.resume=auto")
        return path
    name = read_pointer(root)
    if name is not None:
        target = root / name
        if not (target / MANIFEST).is_file():
            raise CheckpointError(f"{root / POINTER} names {name}, which is missing or incomplete{_HINT}set "
                                  "checkpoint.resume to an older step-N directory, or start a new run")
        return target
    committed = committed_steps(root)
    # A kill between the rename and the pointer update leaves a committed directory and no pointer.
    return committed[-1][1] if committed else None


def read_manifest(directory: Path) -> dict:
    """manifest.json, checked for shape: {"meta": {"step": int, ...}, "files": {name: entry}}."""
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {str(error)[:120]}): the checkpoint "
                              f"cannot prove its content{_HINT}resume from an earlier checkpoint "
                              "(checkpoint.resume=PATH/step-N), or start a new run") from None
    meta = data.get("meta") if isinstance(data, dict) else None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not isinstance(files, dict) or not isinstance(meta.get("step", 0), int):
        raise CheckpointError(f"{path} is not a checkpoint manifest (no meta/files){_HINT}resume from an earlier "
                              "checkpoint (checkpoint.resume=PATH/step-N), or start a new run")
    return data


def file_problems(directory: Path, manifest: dict, rank: int = 0, world_size: int = 1,
                  checksums: bool = True) -> list[str]:
    """Every file of the manifest checked for presence, size and (unless not `checksums`) its
    checksum; each rank checks every world_size-th file, so a large checkpoint is read once in all."""
    problems = []
    for index, (relative, entry) in enumerate(sorted(manifest["files"].items())):
        if index % world_size != rank:
            continue
        size, expected = (entry, None) if isinstance(entry, int) else (entry.get("size"), entry.get(CHECKSUM))
        path = directory / relative
        if not path.is_file() or ".." in Path(relative).parts:
            problems.append(f"{relative} is missing")
            continue
        actual = path.stat().st_size
        if actual != size or size == 0:
            problems.append(f"{relative} has {actual} bytes, manifest says {size}")
        elif checksums and expected and file_digest(path) != expected:
            problems.append(f"{relative}: its content differs from the manifest ({CHECKSUM} checksum)")
    return problems


def corrupt(directory: Path, problems: list[str]) -> CheckpointError:
    return CheckpointError(f"checkpoint {directory} is damaged: {'; '.join(problems)}. Resuming would load "
                           f"damaged weights or optimizer state{_HINT}resume from an earlier checkpoint "
                           "(checkpoint.resume=PATH/step-N), or start a new run")


def verify(directory: Path) -> dict:
    """The checkpoint's meta, after checking every file (CheckpointError naming what is wrong)."""
    manifest = read_manifest(directory)
    problems = file_problems(directory, manifest)
    if problems:
        raise corrupt(directory, problems)
    return manifest["meta"]


def file_digest(path: Path) -> str:
    import xxhash

    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


_OVERLAP_BYTES = 1 << 20  # chunks this large are hashed on a helper thread while they are written


class HashingWriter:
    """A binary file that hashes what is written to it, so the checksum costs no second read.

    Large chunks (tensor data) are hashed on a helper thread while the main thread writes them:
    xxhash and the write both release the GIL, so the hash hides behind the copy into the page
    cache (bench/checkpoint_checksum.py: +3% of a 100 MB save inline, +1% overlapped, on 2 cores).
    Each write returns only when both are done, so the caller may reuse its buffer."""

    def __init__(self, path: str) -> None:
        import xxhash

        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._digest = xxhash.xxh3_128()
        self._helper = None
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data)
        if view.nbytes < _OVERLAP_BYTES:
            self._digest.update(view)
            written = self._file.write(view)
        else:
            if self._helper is None:
                from concurrent.futures import ThreadPoolExecutor

                self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-hash")
            hashed = self._helper.submit(self._digest.update, view)
            written = self._file.write(view)
            hashed.result()
        self.size += written
        return written

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._helper is not None:
            self._helper.shutdown()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@contextlib.contextmanager
def hashing_saves(directory: Path):
    """While open, torch.save into `directory` (by the backends, DeepSpeed's and Accelerate's
    included: they call torch.save by name) streams through a HashingWriter. Yields the checksums,
    {relative path: {"size", CHECKSUM}}; files written otherwise are hashed at commit."""
    import torch

    digests: dict[str, dict] = {}
    original = torch.save
    inside = os.path.abspath(directory) + os.sep

    def save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)) or not os.path.abspath(f).startswith(inside):
            return original(obj, f, *args, **kwargs)
        writer = HashingWriter(os.fspath(f))
        try:
            original(obj, writer, *args, **kwargs)
        finally:
            writer.close()
        digests[os.path.relpath(os.path.abspath(f), inside)] = {"size": writer.size, CHECKSUM: writer.hexdigest()}
        return None

    torch.save = save
    try:
        yield digests
    finally:
        torch.save = original


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
        with hashing_saves(tmp) as digests:
            write_shards(str(tmp))
            save_rank_state(tmp, self.rank)
        _write_atomic(tmp / f"{_DIGESTS}{self.rank:05d}.json", json.dumps(digests))
        _fsync_tree(tmp, self.rank)
        self.barrier()
        if self.rank == 0:
            files = _manifest_files(tmp)
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
        committed = [p for _, p in committed_steps(self.root)]
        for path in committed[: max(0, len(committed) - self.keep_last)]:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)


def _manifest_files(tmp: Path) -> dict[str, dict]:
    """Every file with its size and checksum: the ranks' own (streamed while writing), and a hash
    read back for the few written otherwise (DeepSpeed's copied recovery scripts, say)."""
    digests: dict[str, dict] = {}
    for part in sorted(tmp.glob(f"{_DIGESTS}*.json")):
        digests.update(json.loads(part.read_text(encoding="utf-8")))
        part.unlink()
    files = {}
    for path in sorted(tmp.rglob("*")):
        if path.is_file():
            relative = str(path.relative_to(tmp))
            size = path.stat().st_size
            known = digests.get(relative)
            checksum = known[CHECKSUM] if known and known["size"] == size else file_digest(path)
            files[relative] = {"size": size, CHECKSUM: checksum}
    return files


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
