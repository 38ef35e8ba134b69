"""Committed checkpoints as the launcher and the ranks read them: the `latest` pointer, each step
directory's manifest, and every file checked against it (size and xxh3-128 checksum).

The writing side (runtime/checkpoint.py) commits a step directory with a manifest of every file
it holds; nothing else may stand in that directory, and a file the manifest does not list is as
damaged as a file whose checksum differs. Standard library and xxhash only: `launcher status` and
`launcher run` check a run's checkpoints before anything starts, without torch.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

POINTER = "latest"
MANIFEST = "manifest.json"
CHECKSUM = "xxh3_128"
COMMITS = ".commits"  # in the checkpoints root, a line per commit: its step directory and its manifest's checksum
WHOLE_SUFFIX = ".full"  # step-N.full/: a sharded checkpoint's state whole, for another world size
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
        if path.name.endswith(WHOLE_SUFFIX):  # step-N.full: the joined form, read only through its checkpoint
            raise CheckpointError(f"checkpoint.resume={resume} is the joined form of "
                                  f"{path.name[:-len(WHOLE_SUFFIX)]} (written for a resume on another world "
                                  f"size), not a checkpoint{_HINT}give checkpoint.resume="
                                  f"{path.with_name(path.name[:-len(WHOLE_SUFFIX)])}")
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
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {str(error)[:120]}): the checkpoint "
                              f"cannot prove its content{_HINT}resume from an earlier checkpoint "
                              "(checkpoint.resume=PATH/step-N), or start a new run") from None
    meta = data.get("meta") if isinstance(data, dict) else None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not isinstance(files, dict) or not isinstance(meta.get("step", 0), int):
        raise CheckpointError(f"{path} is not a checkpoint manifest (no meta/files){_HINT}resume from an earlier "
                              "checkpoint (checkpoint.resume=PATH/step-N), or start a new run")
    recorded = committed_manifest_digest(directory.parent, directory.name)
    if recorded is not None and recorded != text_digest(raw):
        raise CheckpointError(f"{path} was changed after its checkpoint was committed (its {CHECKSUM} differs from "
                              f"the one recorded in {directory.parent / COMMITS}): it can no longer vouch for the "
                              f"files{_HINT}restore it, or resume from an earlier checkpoint "
                              "(checkpoint.resume=PATH/step-N)")
    return data


def text_digest(data: bytes) -> str:
    import xxhash

    return xxhash.xxh3_128(data).hexdigest()


def committed_manifest_digest(root: Path, name: str) -> str | None:
    """The checksum the commit of root/name recorded for its manifest (the last commit of that
    name); None for a checkpoint committed before the record existed, or copied from elsewhere."""
    try:
        lines = (root / COMMITS).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    found = None
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(entry, dict) and entry.get("step_dir") == name and isinstance(entry.get("manifest"), str):
            found = entry["manifest"]
    return found


def file_problems(directory: Path, manifest: dict, rank: int = 0, world_size: int = 1,
                  checksums: bool = True) -> list[str]:
    """Every file of the manifest checked for presence, size and (unless not `checksums`) its
    checksum; each rank checks every world_size-th file, so a large checkpoint is read once in all.
    Rank 0 also refuses a file the manifest does not list: nothing unchecked is ever loaded."""
    problems = unlisted_files(directory, manifest) if rank == 0 else []
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


def unlisted_files(directory: Path, manifest: dict) -> list[str]:
    """Files in a committed step directory that its manifest does not list (the manifest aside)."""
    listed = set(manifest["files"])
    found = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() or p.is_symlink())
    return [f"{name} is not in the manifest" for name in found if name != MANIFEST and name not in listed]


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


@dataclass(frozen=True)
class ResumePoint:
    """A committed checkpoint a run will resume from, and the layout that wrote it."""

    directory: Path
    step: int
    world_size: int = 0  # 0: a checkpoint older than the record of it
    backend: str = ""  # "ZeRO-3", "FSDP", "DDP"
    sharded: bool = False  # cut per rank (ZeRO-1/2/3): another world size loads its whole form

    @classmethod
    def of(cls, directory: Path, meta: dict) -> ResumePoint:
        stage = int(meta.get("zero_stage") or 0)
        deepspeed = meta.get("backend") == "deepspeed"
        label = f"ZeRO-{stage}" if deepspeed else str(meta.get("strategy") or meta.get("backend") or "").upper()
        return cls(directory, int(meta.get("step", 0)), int(meta.get("world_size") or 0), label,
                   deepspeed and stage > 0)

    def sentence(self, world_size: int) -> str:
        """What a run on `world_size` ranks does with it, in the plan's words."""
        written = f"{self.world_size}-rank " if self.world_size else ""
        head = f"resumes the {written}{self.backend + ' ' if self.backend else ''}checkpoint of step {self.step}"
        if not self.world_size or self.world_size == world_size:
            return f"{head} from {self.directory}"
        ranks = f"on {world_size} rank{'s' if world_size != 1 else ''}"
        if not self.sharded:
            how = "(resharded)" if self.backend == "FSDP" else "(its whole state on every rank)"
            return f"{head} {ranks} {how} from {self.directory}"
        whole = self.directory.with_name(self.directory.name + WHOLE_SUFFIX)
        joined = f"its shards joined in {whole.name}" if (whole / MANIFEST).is_file() else \
            f"its shards joined once into {whole.name}, kept for later resumes"
        return f"{head} {ranks} (resharded) from {self.directory}; {joined}"


def resumable_world_sizes(global_batch: int, micro: int, limit: int = 4096) -> list[int]:
    """The world sizes on which a checkpoint with this batch resumes: global = micro x accumulation
    x world size, the global batch kept (the sample position depends on it)."""
    if global_batch % micro:
        return []
    per_micro = global_batch // micro
    return [w for w in range(1, min(per_micro, limit) + 1) if per_micro % w == 0]


def trained_step(run, checkpoint_dirs: list[str]) -> int:
    """The newest committed checkpoint's step in any of the given checkpoint.dir values of the run
    directory `run` (the one run.json recorded and the current one); 0 when there is none, and
    nothing to lose."""
    steps = [0]
    for configured in checkpoint_dirs:
        committed = committed_steps(run.checkpoints(configured))
        steps.append(committed[-1][0] if committed else 0)
    return max(steps)


def resume_point(run, checkpoint_dir: str, resume: str, train_steps: int, trained: int) -> ResumePoint | None:
    """Where the ranks of the run directory `run` will resume (None: a fresh start); CheckpointError
    when they could not, or should not: a checkpoint past train.steps, or a fresh start over a run
    that trained."""
    root = run.checkpoints(checkpoint_dir)
    if resume == "never" and trained:
        raise CheckpointError(
            f"checkpoint.resume=never would start {run.root} over, but it has trained to step {trained}: its "
            "checkpoints and metrics would be overwritten\n      HINT: start a new run (name: or --run-dir), or "
            "resume it (checkpoint.resume=auto)")
    directory = find_resume_dir(root, resume)
    if directory is None:
        return None
    manifest = read_manifest(directory)
    problems = file_problems(directory, manifest, checksums=False)
    if problems:
        raise corrupt(directory, problems)
    step = manifest["meta"].get("step", 0)
    if step > train_steps:
        raise CheckpointError(
            f"{directory} is at step {step}, past train.steps={train_steps}: there is nothing to train\n"
            "      HINT: raise train.steps (with --allow-schedule-change), or start a new run")
    return ResumePoint.of(directory, manifest["meta"])
