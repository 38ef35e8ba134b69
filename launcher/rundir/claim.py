"""Taking a run directory for one command: whose it is, what it holds, who else is in it.

`claim_run_dir` checks, before anything is written, that the directory is a run directory (or new
or empty), that it belongs to this experiment (identity.py), and then locks it. Only `commit()`
writes run.json. Any refusal is a RunDirError: one paragraph with a hint, nothing started.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from launcher.rundir.identity import Change, Identity
from launcher.rundir.layout import RunDir, foreign_entries, is_legacy_run_dir
from launcher.rundir.lock import LockHeld, RunLock, describe_holder

FORMAT = 1
ALLOW_FLAG = "--allow-schedule-change"
# In a checkpoint directory: the run directory whose checkpoints it holds, and that run's identity.
# checkpoint.dir may point anywhere, so two run directories could otherwise share one.
OWNER = ".owner.json"
# How long a new launcher waits for the stopping processes of a killed one (torchrun's ranks
# commit a checkpoint on SIGTERM; the launcher gives them 30 s before SIGKILL).
ORPHAN_WAIT_S = 90.0


class RunDirError(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return f"{self.message}\n      HINT: {self.hint}"


@dataclass
class Claim:
    """A locked run directory. commit() records the identity; release() unlocks."""

    run: RunDir
    identity: Identity
    recipe_file: str
    lock: RunLock
    changes: list[Change] = field(default_factory=list)
    created: bool = False  # the directory did not exist before this claim
    committed: bool = False
    checkpoint_root: Path | None = None  # marked as this run's when committed (check_checkpoint_owner)

    @property
    def lock_fd(self) -> int | None:
        return self.lock.fd

    def commit(self, kind: str = "run") -> None:
        record = read_record(self.run) or {}
        history = list(record.get("changes") or [])
        if self.changes:
            history.append({"time": _now(), "keys": {c.key: [c.recorded, c.now] for c in self.changes}})
        new = {"format": FORMAT, "kind": kind, "created": record.get("created") or _now(),
               "recipe_file": self.recipe_file, "fixed": self.identity.fixed, "schedule": self.identity.schedule,
               "changes": history}
        tmp = self.run.identity.with_name("run.json.tmp")
        tmp.write_text(json.dumps(new, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.run.identity)
        if self.checkpoint_root is not None and not _inside(self.checkpoint_root, self.run.root):
            _write_owner(self.checkpoint_root, self.run, self.identity)
        self.committed = True

    def release(self) -> None:
        self.lock.release()
        if self.created and not self.committed:  # refused after locking: leave no trace
            with contextlib.suppress(OSError):
                self.run.lock.unlink()
                self.run.root.rmdir()


def claim_run_dir(run: RunDir, identity: Identity, recipe_file: str, trained_step: int,
                  allow_schedule_change: bool = False, kind: str = "run") -> Claim:
    """Check, then lock. `trained_step`: how far this directory's run has trained (0: never), from
    its checkpoints and metrics; an untrained directory may be taken over by another recipe."""
    check_run_dir(run, identity, trained_step, allow_schedule_change, kind)  # before anything is written
    created = not run.root.exists()
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"{run.root}: cannot create the run directory ({error.strerror})",
                          "choose a writable output_dir or --run-dir") from None
    lock = RunLock(run.lock)
    try:
        lock.acquire(ORPHAN_WAIT_S, lambda holder: print(
            f"launcher: {run.root} is still locked by the processes of a launcher that is gone "
            f"({describe_holder(holder)}); waiting up to {ORPHAN_WAIT_S:.0f} s for them to stop", file=sys.stderr,
            flush=True))
    except LockHeld as held:
        raise RunDirError(f"{run.root} is in use by another launcher: {describe_holder(held.holder)}",
                          "wait for it to finish (`launcher status " + str(run.root) + "`), or use another "
                          "run directory (name: or --run-dir)") from None
    except OSError as error:
        raise RunDirError(f"{run.lock}: cannot lock the run directory ({error.strerror})",
                          "put the run directory on a file system with flock (local, NFSv4, Lustre, GPFS)") from None
    claim = Claim(run, identity, recipe_file, lock, created=created)
    try:
        claim.changes = check_run_dir(run, identity, trained_step, allow_schedule_change, kind)  # under the lock now
    except RunDirError:
        claim.release()
        raise
    return claim


def check_run_dir(run: RunDir, identity: Identity, trained_step: int, allow_schedule_change: bool,
                  kind: str = "run") -> list[Change]:
    """Read-only: raises RunDirError when this command may not use the directory; returns the
    schedule changes it will record."""
    root = run.root
    if root.exists() and not root.is_dir():
        raise RunDirError(f"{root} is a file, not a run directory", "choose another name: or --run-dir")
    foreign = foreign_entries(root)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunDirError(f"{root} holds files that no launcher run made ({shown}); the run would write "
                          "recipe.yaml, logs/ and checkpoints/ among them",
                          "choose a new or empty directory (--run-dir, or name: in the recipe)")
    record = read_record(run)
    if record is None:
        return []
    if record.get("kind", "run") != kind:
        raise RunDirError(f"{root} holds a {record.get('kind', 'run')} (a sweep's runs are its task-N directories); "
                          f"this is a {kind}", "choose another directory (name: or --run-dir)")
    fixed, schedule = Identity.from_record(record).changes(identity)
    if not trained_step or not (fixed or schedule):
        return []  # nothing trained yet: nothing to mismatch
    recorded_file = record.get("recipe_file") or "its recipe"
    if fixed:
        raise RunDirError(
            f"{root} holds another experiment (from {recorded_file}, trained to step {trained_step}); "
            f"its checkpoints cannot continue with\n        " + "\n        ".join(c.render() for c in fixed),
            "start a new run: set `name:` in the recipe or pass --run-dir DIR")
    if not allow_schedule_change:
        raise RunDirError(
            f"{root} was trained to step {trained_step} with another schedule:\n        "
            + "\n        ".join(c.render() for c in schedule),
            f"to continue this run with the new values on purpose, add {ALLOW_FLAG} (train.steps, optimizer "
            "and scheduler keys; run.json keeps the history); or start a new run (name: or --run-dir)")
    return schedule


def check_checkpoint_owner(run: RunDir, root: Path, identity: Identity) -> None:
    """Read-only: RunDirError when the checkpoint directory `root` holds another run's checkpoints
    (another experiment's, or the same experiment's in a run directory that still exists: both
    would write and resume the same steps). A run directory that moved away takes them over."""
    from launcher.rundir.checkpoints import committed_steps

    if _inside(root, run.root):  # RUN_DIR/checkpoints (the default): this run directory's by construction,
        return  # a copy of the directory included
    owner = _read_owner(root)
    if owner is None or not committed_steps(root):
        return
    other = Path(str(owner.get("run_dir") or ""))
    if other == run.root.resolve():
        return
    fixed, _ = Identity(dict(owner.get("fixed") or {}), {}).changes(identity)
    if not fixed and not (other / "run.json").exists():
        return  # this experiment's checkpoints, whose run directory is gone (a moved project)
    what = (f"another experiment, the run {other}; this run differs in\n        "
            + "\n        ".join(c.render() for c in fixed)) if fixed else \
        f"the run {other}, which still exists: both would write and resume the same steps"
    raise RunDirError(f"checkpoint.dir {root} holds the checkpoints of {what}",
                      f"give this run its own checkpoint.dir (unset, it is RUN_DIR/checkpoints), or continue "
                      f"{other} itself (--run-dir {other})")


def _inside(path: Path, root: Path) -> bool:
    resolved, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return resolved == base or base in resolved.parents


def _read_owner(root: Path) -> dict | None:
    try:
        owner = json.loads((root / OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _write_owner(root: Path, run: RunDir, identity: Identity) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / (OWNER + ".tmp")
        tmp.write_text(json.dumps({"run_dir": str(run.root.resolve()), "fixed": identity.fixed}, indent=1,
                                  ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, root / OWNER)
    except OSError as error:
        raise RunDirError(f"{root}: cannot write to the checkpoint directory ({error.strerror})",
                          "choose a writable checkpoint.dir") from None


def read_record(run: RunDir) -> dict | None:
    """run.json, or the identity of a run directory from before run.json (its recipe.yaml)."""
    if run.identity.exists():
        try:
            record = json.loads(run.identity.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise RunDirError(f"{run.identity} is unreadable ({error}); it says which experiment the run "
                              "directory holds", "restore it, or start a new run directory") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{run.identity} is not a run record", "restore it, or start a new run directory")
        return record
    if is_legacy_run_dir(run.root):
        import yaml

        try:
            resolved = yaml.safe_load(run.recipe.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            resolved = None
        if isinstance(resolved, dict):
            identity = Identity.of(resolved)
            return {"kind": "run", "fixed": identity.fixed, "schedule": identity.schedule,
                    "recipe_file": str(run.recipe)}
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
