"""A run's checkpoints from the trainer's side: what a save records, and a verified restore."""

from __future__ import annotations

import time
from pathlib import Path

from launcher.rundir import checkpoints as ckpt
from launcher.runtime.checkpoint import load_rank_state, write_whole_form
from launcher.runtime.dist import DistEnv, barrier, gather_lists
from launcher.runtime.metrics import emit
from launcher.runtime.run import Run


def restore(recipe, root: Path, backend, env: DistEnv) -> tuple[int, list[dict], dict]:
    """Load the checkpoint to resume from: (its step, records for metrics.jsonl: warnings and the
    resharding's time, its meta); (0, [], {}) fresh."""
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
    if meta["global_batch"] != recipe.batch.global_:
        raise ckpt.CheckpointError(f"{directory} was trained with batch.global={meta['global_batch']}, this run "
                                   f"has {recipe.batch.global_}; the sample position would be wrong. "
                                   "Keep batch.global, or start a new run directory")
    if meta["world_size"] == env.world_size:
        backend.load(str(directory))
        if load_rank_state(directory, env.rank):
            records = []
        else:
            records = [{"warning": f"rank {env.rank}: no RNG state in {directory.name}; the random streams follow "
                                   "the global step from the next step on"}]
    else:
        records = _load_on_another_size(directory, meta, backend, env)
    if env.rank == 0:
        moved = meta["world_size"] != env.world_size
        emit(f"resumed from {directory} at step {meta['step']}"
             + (f", written by {meta['world_size']} ranks, on {env.world_size}" if moved else ""))
    return int(meta["step"]), records, meta


def _load_on_another_size(directory: Path, meta: dict, backend, env: DistEnv) -> list[dict]:
    """The checkpoint on a world size other than the one that wrote it: its state whole (joined
    once from the shards when the backend cut it per rank), each rank taking its part."""
    records: list[dict] = []
    if backend.sharded_by_rank(str(directory)):
        backend.load_full(str(whole_form(directory, backend, env, records)))
    else:  # whole already (DDP, FSDP's full state, ZeRO-0)
        backend.load(str(directory))
    ranks = f"{env.world_size} rank{'s' if env.world_size != 1 else ''}"
    records.append({"warning": f"resumed a {meta['world_size']}-rank checkpoint on {ranks}"
                               f"{' (resharded)' if backend.sharded_by_rank(str(directory)) else ''}: the data "
                               "position, the LR schedule and the random streams follow the global step"})
    return records


def whole_form(directory: Path, backend, env: DistEnv, records: list[dict]) -> Path:
    """The checkpoint's state whole, in `step-N.full/` beside it: written once, by all ranks together,
    atomically, with a manifest of checksums; verified (by rank 0) and reused by later resumes,
    rebuilt when damaged (collective)."""
    target = directory.with_name(directory.name + ckpt.WHOLE_SUFFIX)
    problems = gather_lists(_whole_form_problems(target) if env.rank == 0 else [])
    if not problems:
        return target
    if env.rank == 0 and target.exists():
        records.append({"warning": f"{target.name} was damaged ({'; '.join(problems)[:300]}): rebuilt from "
                                   f"{directory.name}"})
    started = time.perf_counter()
    write_whole_form(directory, target, backend, env.rank, env.world_size, barrier)
    seconds = time.perf_counter() - started
    if env.rank == 0:
        records.append({"reshard_s": round(seconds, 4), "resharded": directory.name})
        emit(f"joined the shards of {directory.name} into {target.name} in {seconds:.2f}s on {env.world_size} "
             f"rank{'s' if env.world_size != 1 else ''} (kept for later resumes)")
    return target


def _whole_form_problems(target: Path) -> list[str]:
    if not target.is_dir():
        return ["absent"]
    try:
        return ckpt.file_problems(target, ckpt.read_manifest(target))
    except ckpt.CheckpointError as error:
        return [str(error).splitlines()[0]]


def save(run: Run, step: int) -> None:
    """Commit a checkpoint of every rank's state at `step` (collective)."""
    recipe, math = run.recipe, run.math
    meta = {"step": step, "samples": step * math.global_batch, "world_size": run.env.world_size,
            "global_batch": math.global_batch, "backend": recipe.backend.name,
            "zero_stage": recipe.backend.zero_stage, "strategy": recipe.backend.strategy, "recipe": recipe.recipe,
            "tracker_run_id": run.run_id}
    started = time.perf_counter()
    run.checkpoints.save(step, meta, run.backend.save)
    if run.main:  # what a checkpoint costs, beside what resharding it costs (bench/reshard.py)
        run.log.write({"step": step, "checkpoint_s": round(time.perf_counter() - started, 4)})
