"""The training loop every recipe shares: accumulation, LR, logging, evaluation, checkpoints.

Read top to bottom: build -> restore -> loop (micro-steps, one optimizer step) -> export.
"""

from __future__ import annotations

import os
import signal
import time
from math import exp
from pathlib import Path

import torch

from launcher.backends import make_backend
from launcher.config.load import LoadedRecipe
from launcher.plan.batch import batch_math
from launcher.rundir.layout import RunDir
from launcher.runtime import checkpoint as ckpt
from launcher.runtime.dist import DistEnv, all_reduce_sum, barrier, gather_lists
from launcher.runtime.metrics import MetricsLog, console_line, emit, peak_flops
from launcher.runtime.nonfinite import NonFiniteGuard
from launcher.runtime.optim import param_groups
from launcher.runtime.profiling import StepProfiler, profile_window
from launcher.runtime.sampling import GlobalOrder, StepBatches, StreamData
from launcher.runtime.schedule import lr_at
from launcher.runtime.stopping import StopRequest
from launcher.runtime.stuck import arm_stall_dump, disarm_stall_dump, stall_dump_after
from launcher.runtime.task import RunContext, Task
from launcher.tracking import NullTracker, SkipLoggedSteps, job_run_id, make_tracker


def train(loaded: LoadedRecipe, run_dir: str, env: DistEnv) -> None:
    recipe = loaded.recipe
    math = batch_math(recipe.batch.global_, recipe.batch.micro, env.world_size, 1, env.world_size,
                      recipe.train.steps, recipe.scheduler.warmup_steps, None)
    main = env.rank == 0

    # Same seed everywhere before the model is built: every rank starts from identical weights.
    torch.manual_seed(recipe.seed)
    startup = StartupClock()
    backend = make_backend(recipe, math, env)
    ctx = RunContext(env.rank, env.local_rank, env.world_size, backend.device, run_dir, barrier)
    task: Task = loaded.module.build(recipe, ctx)
    startup.mark("build_s")
    if recipe.train.activation_checkpointing:
        enable = getattr(task.model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise ValueError(f"train.activation_checkpointing: the model of {recipe.recipe} has no "
                             "gradient_checkpointing_enable(); set it to false for this recipe")
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    groups = task.param_groups or param_groups(
        task.model, recipe.optimizer.weight_decay, recipe.optimizer.decay_norm_and_bias)
    backend.prepare(task.model, groups)
    startup.mark("prepare_s")
    # From here on each rank draws its own randomness (dropout, masking).
    torch.manual_seed((recipe.seed * 100_003 + env.rank + 1) % 2**64)  # torch takes 64 bits

    root = RunDir(run_dir).checkpoints(recipe.checkpoint.dir)
    manager = ckpt.CheckpointManager(str(root), recipe.checkpoint.keep_last, env.rank, barrier)
    start_step, warnings, meta = _restore(recipe, root, backend, env)
    log = MetricsLog(RunDir(run_dir).metrics, main, start_step)
    for warning in warnings:
        log.write({"step": start_step, "warning": warning})
    if env.attempt and main:  # torchrun restarted the group after a failure (cluster.max_restarts)
        log.write({"step": start_step, "event": "restart", "attempt": env.attempt, "resumed_from_step": start_step})
        emit(f"restart {env.attempt} of cluster.max_restarts={recipe.cluster.max_restarts}: "
             f"resuming at step {start_step}")
    # The checkpoint's run id wins: a resumed job continues the run it was part of.
    # Only rank 0 tracks and writes checkpoint metadata, so only it needs the id.
    run_id = meta.get("tracker_run_id") or (job_run_id(run_dir) if main else "")
    tracker = make_tracker(recipe.tracking, run_dir, run_id, Path(run_dir).name,
                           _tracker_config(recipe, math, env), main) if main else NullTracker()
    # Steps between the checkpoint and the kill were already sent to the tracker by the earlier
    # attempt; exact resume recomputes identical values, so they are not sent twice.
    tracker = SkipLoggedSteps(tracker, log.previous_last_step)
    try:
        startup.mark("restore_s")
        _loop(recipe, task, backend, math, env, log, tracker, manager, start_step, run_id, run_dir, startup)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    finally:
        disarm_stall_dump()  # a step that raised left it armed: no stack dump during teardown
    tracker.finish(exit_code=0)


def _loop(recipe, task: Task, backend, math, env: DistEnv, log: MetricsLog, tracker, manager, start_step: int,
          run_id: str, run_dir: str, startup: StartupClock) -> None:
    main = env.rank == 0

    order = GlobalOrder(len(task.train_data), recipe.seed, task.shuffle)
    end_step = recipe.train.steps
    if recipe.train.stop_after_steps:
        end_step = min(end_step, start_step + recipe.train.stop_after_steps)
    sampler = StepBatches(order, math.global_batch, math.micro, env.world_size, env.rank, start_step, end_step)
    # Its own generator: creating a DataLoader iterator otherwise draws from the global RNG, which
    # would shift the dropout stream of a resumed run by one draw.
    workers = task.loader_workers
    loader = torch.utils.data.DataLoader(StreamData(task.train_data, order), batch_sampler=sampler,
                                         collate_fn=task.collate, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                                         pin_memory=backend.device.type == "cuda",
                                         generator=torch.Generator().manual_seed(recipe.seed))
    batches = iter(loader)
    device = backend.device
    peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)

    interval_loss = torch.zeros((), device=device, dtype=torch.float64)
    interval_count = torch.zeros((), device=device, dtype=torch.float64)
    interval_start, interval_steps = time.perf_counter(), 0
    guard = NonFiniteGuard(recipe.train.on_nonfinite, recipe.train.max_nonfinite_skips, device, start_step)
    last_record: dict = {}
    stop = StopRequest()
    # Stops itself after its window; a run stopped inside the window exits without the files.
    profiler = StepProfiler(RunDir(run_dir).profile, device,
                            *profile_window(end_step - start_step, recipe.train.profile_steps if main else 0))
    if recipe.train.eval_at_start and start_step == 0:
        _evaluate_and_sample(task, backend, env, log, tracker, run_dir, 0, recipe.train.steps)
    stall_s = stall_dump_after(recipe.cluster.collective_timeout)
    for step in range(start_step, end_step):
        arm_stall_dump(stall_s)  # a step that never ends leaves this rank's stacks in its log
        micro_batches = [next(batches) for _ in range(math.accumulation)]
        # Normalise by the targets of the whole global batch (all ranks, all micro-steps), so
        # uneven micro-batches give exactly the gradient of one big batch. Backends average
        # gradients over ranks, hence the factor world_size.
        count = _on_device(float(sum(task.count_targets(b) for b in micro_batches)), device)
        all_reduce_sum(count)
        scale = env.world_size / count
        lr = lr_at(step, recipe.optimizer.lr, recipe.train.steps, recipe.scheduler)
        step_loss = torch.zeros((), device=device, dtype=torch.float64)
        step_count = torch.zeros((), device=device, dtype=torch.float64)
        for k, batch in enumerate(micro_batches):
            batch = _to_device(batch, device)
            with backend.autocast():
                loss_sum, targets = task.loss(backend.model, batch)
            backend.backward(loss_sum * scale.to(loss_sum.dtype), last=k == math.accumulation - 1)
            step_loss += loss_sum.detach().double()
            step_count += targets.double()
        grad_norm = backend.step(lr, step)
        if guard.after_step(step + 1, grad_norm, step_loss, backend):
            interval_loss += step_loss
            interval_count += step_count
        profiler.step()
        interval_steps += 1
        done = step + 1
        if step == start_step and main:
            startup.mark("first_step_s")  # includes the first batch and torch.compile's compilation
            log.write({"step": done, **startup.report()})
        if done % recipe.train.log_every == 0 or done == end_step:
            elapsed = time.perf_counter() - interval_start
            totals = all_reduce_sum(torch.stack([interval_loss, interval_count, guard.flag()])).tolist()
            samples_per_s = interval_steps * math.global_batch / elapsed
            last_record = {
                "step": done, "loss": totals[0] / totals[1] if totals[1] else float("nan"), "lr": lr,
                **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                "samples": done * math.global_batch,
                "samples_per_s": samples_per_s, "step_time_s": elapsed / interval_steps,
            }
            if task.tokens_per_sample:
                last_record["tokens_per_s"] = samples_per_s * task.tokens_per_sample
            if task.flops_per_sample and peak:
                last_record["mfu"] = samples_per_s * task.flops_per_sample / (peak * env.world_size)
            if device.type == "cuda":
                last_record["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            if guard.skipped:
                last_record["skipped_steps"] = guard.skipped
            log.write(last_record)
            tracker.log(last_record, done)
            if main:
                emit(console_line(last_record, recipe.train.steps))
            guard.check(done, totals[2], manager.root)  # after the line: a NaN is seen where it happened
            interval_loss.zero_(), interval_count.zero_()
            interval_start, interval_steps = time.perf_counter(), 0
        disarm_stall_dump()  # evaluation and saving below run on their own clocks
        eval_due = recipe.train.eval_every and done % recipe.train.eval_every == 0
        save_due = recipe.checkpoint.every_steps and done % recipe.checkpoint.every_steps == 0
        if eval_due or save_due or done in (end_step, recipe.train.steps):
            guard.check_agreed(done, manager.root)  # nothing non-finite is evaluated, saved or exported
        if eval_due or done == recipe.train.steps:
            _evaluate_and_sample(task, backend, env, log, tracker, run_dir, done, recipe.train.steps)
        if save_due or done == end_step:
            _save(manager, backend, recipe, math, env, done, run_id)
        signum = stop.agreed()
        if signum is not None:
            if not (save_due or done == end_step):  # never a second save of the same step
                guard.check_agreed(done, manager.root)
                _save(manager, backend, recipe, math, env, done, run_id)
            if main:
                emit(f"stopped by {signal.Signals(signum).name} after step {done}: checkpoint committed; "
                     "run the same command to resume")
            raise Stopped(signum)
    if end_step == recipe.train.steps:
        _export(task, backend, run_dir, main)
        if main and recipe.tracking.log_model and task.export is not None:
            tracker.log_model(str(RunDir(run_dir).export), f"model-{Path(run_dir).name}")


class Stopped(Exception):
    """Training stopped on a signal after committing a checkpoint."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _evaluate_and_sample(task: Task, backend, env: DistEnv, log: MetricsLog, tracker, run_dir: str, step: int,
                         total_steps: int) -> None:
    metrics, tensors = evaluate(task, backend, env)
    if tensors and task.eval_artifacts is not None and env.rank == 0:
        for name, path in task.eval_artifacts(tensors, step, run_dir):
            tracker.log_image(name, path, step)
    if metrics:
        record = {"step": step, **metrics}
        log.write(record)
        tracker.log(metrics, step)
        if env.rank == 0:
            emit(console_line(record, total_steps))
    if task.generate_samples is not None:
        _log_samples(task.generate_samples(backend.model), step, run_dir, tracker, env.rank == 0)


def evaluate(task: Task, backend, env: DistEnv) -> tuple[dict, dict]:
    """Mean loss over the eval split (each rank scores every world_size-th sample), plus the
    recipe's metrics, each a (sum, count) pair reduced over all ranks before dividing."""
    if task.eval_data is None or len(task.eval_data) == 0:
        return {}, {}
    model = backend.model
    model.eval()
    totals = torch.zeros(2, device=backend.device, dtype=torch.float64)
    indices = list(range(env.rank, len(task.eval_data), env.world_size))
    micro = max(1, backend.recipe.batch.micro)
    extra: dict[str, tuple] = {}
    with torch.no_grad():
        batches = [task.collate([task.eval_data[i] for i in indices[j: j + micro]])
                   for j in range(0, len(indices), micro)]
        batches = [_to_device(b, backend.device) for b in batches]
        for batch in batches:
            with backend.autocast():
                loss_sum, targets = task.loss(model, batch)
            totals[0] += loss_sum.double()
            totals[1] += targets.double()
        if task.evaluate is not None:
            extra = task.evaluate(model, batches)
    model.train()
    # Copies: a recipe's (sum, count) pairs may be views into these tensors; reducing in place
    # would count them twice.
    tensors = {k: all_reduce_sum(v.detach().to(torch.float64, copy=True)) for k, v in extra.items()
               if isinstance(v, torch.Tensor)}
    extra = {k: v for k, v in extra.items() if k not in tensors}
    names = list(extra)
    if names:
        totals = torch.cat([totals, torch.stack([torch.as_tensor(v, dtype=torch.float64, device=totals.device)
                                                 for name in names for v in extra[name]])])
    all_reduce_sum(totals)
    out = {"eval_loss": (totals[0] / totals[1]).item()}
    if task.report_perplexity:
        out["eval_perplexity"] = exp(min(out["eval_loss"], 700.0))  # capped: no overflow on a diverged run
    for i, name in enumerate(names):
        out[name] = (totals[2 + 2 * i] / totals[3 + 2 * i]).item()
    return out, tensors


def _log_samples(rows: list[dict], step: int, run_dir: str, tracker, main: bool) -> None:
    if not main or not rows:
        return
    import json

    with open(RunDir(run_dir).samples, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"step": step, **row}) + "\n")
    for row in rows:
        emit(f"sample [{row['mode']}] {row['prompt']!r} -> {row['text']!r}")
    columns = ["step", *rows[0].keys()]
    tracker.log_table("samples", columns, [[step, *row.values()] for row in rows], step)


def _restore(recipe, root: Path, backend, env: DistEnv) -> tuple[int, list[str], dict]:
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
    if not ckpt.load_rank_state(directory, env.rank):
        warnings.append(f"rank {env.rank}: no RNG state in {directory.name}; dropout/masking streams restart")
    if env.rank == 0:
        emit(f"resumed from {directory} at step {meta['step']}")
    return int(meta["step"]), warnings, meta


def _tracker_config(recipe, math, env: DistEnv) -> dict:
    from launcher.config.load import recipe_to_dict
    from launcher.secrets import redact_env

    config = recipe_to_dict(recipe)
    config["cluster"]["env"] = redact_env(config["cluster"]["env"])
    config["launch"] = {"world_size": env.world_size, "nodes": env.world_size // env.local_world_size,
                        "processes_per_node": env.local_world_size, "backend": recipe.backend.name,
                        "zero_stage": recipe.backend.zero_stage if recipe.backend.name == "deepspeed" else None,
                        "strategy": recipe.backend.strategy if recipe.backend.name == "accelerate" else None,
                        "micro_batch": math.micro, "accumulation": math.accumulation,
                        "global_batch": math.global_batch}
    return config


def _save(manager, backend, recipe, math, env: DistEnv, step: int, run_id: str) -> None:
    meta = {"step": step, "samples": step * math.global_batch, "world_size": env.world_size,
            "global_batch": math.global_batch, "backend": recipe.backend.name,
            "zero_stage": recipe.backend.zero_stage, "recipe": recipe.recipe, "tracker_run_id": run_id}
    manager.save(step, meta, backend.save)


def _export(task: Task, backend, run_dir: str, main: bool) -> None:
    if task.export is None:
        return
    state = backend.export_state_dict()  # collective under ZeRO-3: every rank calls it
    if main:
        directory = RunDir(run_dir).export
        directory.mkdir(parents=True, exist_ok=True)
        model = backend.unwrapped()
        task.export(model, state, str(directory))
    barrier()


class StartupClock:
    """Where the time from `launcher run` to the first optimizer step goes, phase by phase.

    launch_overhead_s is what the launcher and the engines add: everything except the recipe's
    own build and the first step (which holds the first batch and the compilation)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.last = time.time()
        self.launched = float(os.environ.get("LAUNCHER_START_TIME") or 0)
        worker = float(os.environ.get("LAUNCHER_WORKER_START_TIME") or 0)
        if self.launched and worker:
            self.phases["to_worker_s"] = worker - self.launched  # CLI (validate, plan), torchrun, interpreter
            self.phases["imports_and_group_s"] = self.last - worker  # torch import, process group

    def mark(self, phase: str) -> None:
        now = time.time()
        self.phases[phase] = now - self.last
        self.last = now

    def report(self) -> dict:
        out = {"startup": {k: round(v, 3) for k, v in self.phases.items()}}
        if self.launched:
            total = self.last - self.launched
            out["launch_to_first_step_s"] = total
            out["launch_overhead_s"] = total - self.phases.get("build_s", 0) - self.phases.get("first_step_s", 0)
        return out


def _on_device(value: float, device):
    """A host number as a float64 device tensor without a stream sync: a plain torch.tensor(...,
    device="cuda") copies from pageable memory and waits for the GPU, every step."""
    host = torch.tensor(value, dtype=torch.float64)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
