"""A run's checkpoints from the trainer's side: what a save records, and a verified restore."""

from __future__ import annotations

from pathlib import Path

from launcher.rundir import checkpoints as ckpt
from launcher.runtime.checkpoint import load_rank_state
from launcher.runtime.dist import DistEnv, gather_lists
from launcher.runtime.metrics import emit
from launcher.runtime.run import Run


def restore(recipe, root: Path, backend, env: DistEnv) -> tuple[int, list[str], dict]:
    """Load the checkpoint to resume from: (its step, warnings to record, its meta); (0, [], {}) fresh."""
    directory = ckpt.find_resume_dir(root, recipe.checkpoint.resume)
    if directory is None:
        return 0, [], {}
    manifest = ckpt.read_manifest(directory)
    # Each rank checks its share of the files; all ranks learn every problem, so all stop together.
    problems = gather_lists(ckpt.file_problems(directory, manifest, env.rank, env.world_size))
    if problems:
        raise ckpt.corrupt(directory, problems)
    meta = manifest["meta"]
    if meta["step"] > recipe.train.steps:
        raise ckpt.CheckpointError(f"{directory} is at step {meta['step']}, past train.steps={recipe.train.steps}: "
                                   "there is nothing to train\n      HINT: raise train.steps, or resume from "
                                   "an earlier checkpoint (checkpoint.resume=PATH/step-N)")
    warnings = []
    if meta["world_size"] != env.world_size:
        if recipe.backend.name == "deepspeed" and recipe.backend.zero_stage > 0:
            raise ckpt.CheckpointError(
                f"{directory} was written by {meta['world_size']} processes with ZeRO-{recipe.backend.zero_stage}, "
                f"this run has {env.world_size}. Resume with the same world size, or convert it with DeepSpeed's "
                "universal checkpoint tool (ds_to_universal.py) first")
        warnings.append(f"resuming a {meta['world_size']}-process checkpoint on {env.world_size} processes: "
                        "data order is preserved (it depends on the global step), per-rank RNG streams are new")
    if meta["global_batch"] != recipe.batch.global_:
        raise ckpt.CheckpointError(f"{directory} was trained with batch.global={meta['global_batch']}, this run "
                                   f"has {recipe.batch.global_}; the sample position would be wrong. "
                                   "Keep batch.global, or start a new run directory")
    backend.load(str(directory))
    if not load_rank_state(directory, env.rank):
        warnings.append(f"rank {env.rank}: no RNG state in {directory.name}; dropout/masking streams restart")
    if env.rank == 0:
        emit(f"resumed from {directory} at step {meta['step']}")
    return int(meta["step"]), warnings, meta


def save(run: Run, step: int) -> None:
    """Commit a checkpoint of every rank's state at `step` (collective)."""
    recipe, math = run.recipe, run.math
    meta = {"step": step, "samples": step * math.global_batch, "world_size": run.env.world_size,
            "global_batch": math.global_batch, "backend": recipe.backend.name,
            "zero_stage": recipe.backend.zero_stage, "recipe": recipe.recipe, "tracker_run_id": run.run_id}
    run.checkpoints.save(step, meta, run.backend.save)
