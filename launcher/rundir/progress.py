"""How far a run directory has trained, and whether its checkpoints can be resumed: read before
anything starts, with the standard library only (the ranks verify every checksum again)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launcher.rundir.layout import RunDir
from launcher.runtime import checkpoint as ckpt


@dataclass(frozen=True)
class ResumePoint:
    directory: Path
    step: int


def trained_step(run: RunDir, checkpoint_dirs: list[str]) -> int:
    """The newest committed checkpoint's step in any of the given checkpoint.dir values (the one
    run.json recorded and the current one); 0 when there is none, and nothing to lose."""
    steps = [0]
    for configured in checkpoint_dirs:
        committed = ckpt.committed_steps(run.checkpoints(configured))
        steps.append(committed[-1][0] if committed else 0)
    return max(steps)


def resume_point(run: RunDir, recipe, trained: int) -> ResumePoint | None:
    """Where the ranks will resume (None: a fresh start); CheckpointError when they could not, or
    should not: a checkpoint past train.steps, or a fresh start over a run that trained."""
    root = run.checkpoints(recipe.checkpoint.dir)
    if recipe.checkpoint.resume == "never" and trained:
        raise ckpt.CheckpointError(
            f"checkpoint.resume=never would start {run.root} over, but it has trained to step {trained}: its "
            "checkpoints and metrics would be overwritten\n      HINT: start a new run (name: or --run-dir), or "
            "resume it (checkpoint.resume=auto)")
    directory = ckpt.find_resume_dir(root, recipe.checkpoint.resume)
    if directory is None:
        return None
    manifest = ckpt.read_manifest(directory)
    problems = ckpt.file_problems(directory, manifest, checksums=False)
    if problems:
        raise ckpt.corrupt(directory, problems)
    step = manifest["meta"].get("step", 0)
    if step > recipe.train.steps:
        raise ckpt.CheckpointError(
            f"{directory} is at step {step}, past train.steps={recipe.train.steps}: there is nothing to train\n"
            "      HINT: raise train.steps (with --allow-schedule-change), or start a new run")
    return ResumePoint(directory, step)
