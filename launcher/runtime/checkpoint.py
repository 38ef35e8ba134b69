"""Writing checkpoints that survive a kill at any instant and prove their content on resume.

Commit protocol (every rank takes part):
  1. rank 0 empties `.tmp-step-N/`; barrier
  2. every rank writes its files there (backend shards + its RNG state) through CheckpointFiles,
     the one way into a step directory: each file is hashed (xxh3-128) in the same pass that
     writes it, with no second read of a large shard; fsync; barrier
  3. rank 0 writes manifest.json (every file, its size and checksum), fsyncs, renames the
     directory to `step-N/`, then replaces the `latest` pointer (write temp + rename), then deletes
     checkpoints beyond keep_last (only now that the new one is committed); barrier
A kill before the rename leaves only a `.tmp-*` directory, which resume never reads. A file that
did not pass through CheckpointFiles has no checksum, so the commit refuses it rather than let it
in unchecked; loading checks every file against the manifest (launcher/rundir/checkpoints.py), so
a truncated, zeroed, bit-flipped or unlisted file is a hard error naming it, never a silent resume.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from launcher.rundir.checkpoints import (
    CHECKSUM,
    COMMITS,
    MANIFEST,
    POINTER,
    WHOLE_SUFFIX,
    CheckpointError,
    committed_steps,
    file_digest,
    step_dir_name,
    text_digest,
)

_HINT = "\n      HINT: "
_DIGESTS = ".digests-rank"  # per-rank checksums of the files it wrote, merged into the manifest

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


class CheckpointFiles:
    """The one way into a step directory being written: every file passes through here and is
    hashed while it is written. The backends save their state with save() or open(); a library
    that writes files itself is given a path and a writer of ours (DeepSpeed's checkpoint engine,
    backends/deepspeed_backend.py); a file a library copies in by itself is adopted by name. What
    none of them wrote is refused at commit: it would be a file without a checksum."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.digests: dict[str, dict] = {}  # relative path -> {"size", CHECKSUM}

    def path(self, relative: str) -> str:
        return str(self.directory / relative)

    @contextlib.contextmanager
    def open(self, relative: str) -> Iterator[HashingWriter]:
        """A binary file to write, hashed as it is written."""
        target = self._inside(self.path(relative))
        target.parent.mkdir(parents=True, exist_ok=True)
        writer = HashingWriter(str(target))
        try:
            yield writer
        finally:
            writer.close()
        self.digests[str(target.relative_to(self.directory))] = {"size": writer.size, CHECKSUM: writer.hexdigest()}

    def save(self, obj, relative: str, **torch_save_options) -> None:
        """torch.save of `obj` into the step directory."""
        import torch

        with self.open(relative) as writer:
            torch.save(obj, writer, **torch_save_options)

    def save_at(self, obj, path: str, **torch_save_options) -> None:
        """save() for a library that names the file by its path (inside the step directory)."""
        self.save(obj, str(self._inside(path).relative_to(self.directory)), **torch_save_options)

    def adopt(self, relative: str) -> None:
        """Hash a file a library wrote into the step directory by itself (read back once; for small
        files the integration names, never for model or optimizer state)."""
        target = self._inside(self.path(relative))
        self.digests[relative] = {"size": target.stat().st_size, CHECKSUM: file_digest(target)}

    def _inside(self, path: str) -> Path:
        target = Path(os.path.abspath(path))
        if self.directory.resolve() not in target.resolve().parents:
            raise CheckpointError(f"{path} is outside the checkpoint being written ({self.directory})")
        return target


class CheckpointManager:
    def __init__(self, root: str, keep_last: int, rank: int, barrier) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank
        self.barrier = barrier

    def save(self, step: int, meta: dict, write_shards: Callable[[CheckpointFiles], None]) -> Path:
        """`write_shards(files)` is called on every rank; returns the committed directory."""
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        final = self.root / step_dir_name(step)
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        self.barrier()
        try:
            return self._write_and_commit(step, meta, write_shards, tmp, final)
        except Exception as error:  # out of space, a quota, a dead mount: this step is not committed
            cause = _os_error_in(error)  # torch.save reports a failed write as a RuntimeError
            if cause is None:
                raise
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise self._not_committed(step, cause, tmp) from None

    def _not_committed(self, step: int, error: OSError, tmp: Path) -> CheckpointError:
        committed = committed_steps(self.root)
        kept = f"{committed[-1][1].name} is intact and a resume starts there" if committed else \
            "no earlier checkpoint exists"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            usage = shutil.disk_usage(self.root)
            last = sum(p.stat().st_size for p in committed[-1][1].rglob("*") if p.is_file()) if committed else 0
            need = f"; the last checkpoint took {_size(last)}" if last else ""
            return CheckpointError(
                f"no space left in {self.root} ({_size(usage.free)} free of {_size(usage.total)}{need}): the "
                f"checkpoint of step {step} was not committed; {kept}{_HINT}free space there, or set "
                "checkpoint.dir on a larger file system, then run the same command")
        return CheckpointError(f"writing the checkpoint of step {step} in {tmp} failed ({error.strerror or error}): "
                               f"it was not committed; {kept}{_HINT}check that {self.root} is writable and "
                               "mounted, then run the same command")

    def _write_and_commit(self, step: int, meta: dict, write_shards, tmp: Path, final: Path) -> Path:
        files = CheckpointFiles(tmp)
        write_shards(files)
        save_rank_state(files, self.rank)
        _write_atomic(tmp / f"{_DIGESTS}{self.rank:05d}.json", json.dumps(files.digests))
        _fsync_tree(tmp, self.rank)
        self.barrier()
        if self.rank == 0:
            listed = _manifest_files(tmp)
            manifest = json.dumps({"meta": meta, "files": listed}, indent=1)
            _write_atomic(tmp / MANIFEST, manifest)
            # The manifest's own checksum, kept outside the step directory: an edited manifest (an
            # entry dropped, a checksum replaced) cannot vouch for files it no longer describes.
            _append_line(self.root / COMMITS, json.dumps({"step_dir": final.name,
                                                          "manifest": text_digest(manifest.encode())}))
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
                shutil.rmtree(path.with_name(path.name + WHOLE_SUFFIX), ignore_errors=True)  # its whole form first
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)


def _manifest_files(tmp: Path) -> dict[str, dict]:
    """Every file with the size and checksum its writer recorded. A file no rank wrote through
    CheckpointFiles, or one changed after it was written, fails the save: committed, it would be
    a file the manifest cannot vouch for."""
    digests: dict[str, dict] = {}
    for part in sorted(tmp.glob(f"{_DIGESTS}*.json")):
        digests.update(json.loads(part.read_text(encoding="utf-8")))
        part.unlink()
    files, problems = {}, []
    for path in sorted(tmp.rglob("*")):
        if not path.is_file():
            continue
        relative = str(path.relative_to(tmp))
        known = digests.get(relative)
        if known is None:
            problems.append(f"{relative} was written outside the checkpoint writer (no checksum)")
        elif known["size"] != path.stat().st_size:
            problems.append(f"{relative} changed after it was written ({known['size']} bytes hashed, "
                            f"{path.stat().st_size} on disk)")
        else:
            files[relative] = known
    if problems:
        raise CheckpointError(f"checkpoint {tmp} was not committed: {'; '.join(problems)}\n      HINT: this is a "
                              "bug in a backend's save (every file must go through CheckpointFiles); the previous "
                              "checkpoint is intact")
    return files


def write_whole_form(directory: Path, target: Path, backend, rank: int, world_size: int, barrier) -> None:
    """The backend's whole form of a committed checkpoint (runtime/resume.py), written by all ranks
    as a step directory is: each its part into a temporary directory through CheckpointFiles, then
    rank 0 merges their checksums into a manifest and renames it into place (collective)."""
    tmp = target.with_name(f".tmp-{target.name}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    files = CheckpointFiles(tmp)
    backend.write_full_form(str(directory), files, rank, world_size)
    _write_atomic(tmp / f"{_DIGESTS}{rank:05d}.json", json.dumps(files.digests))
    _fsync_tree(tmp, rank)
    barrier()
    if rank == 0:
        listed = _manifest_files(tmp)
        _write_atomic(tmp / MANIFEST, json.dumps({"meta": {"whole_form_of": directory.name, "parts": world_size},
                                                  "files": listed}, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
    barrier()


def save_rank_state(files: CheckpointFiles, rank: int) -> None:
    import torch

    state = {
        "python": list(_tupled_to_lists(random.getstate())),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    files.save(state, f"rng-rank{rank:05d}.pt")


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


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError an exception was raised from or while handling, however deep (None: none)."""
    for _ in range(16):
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
        if error is None:
            return None
    return None


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


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
