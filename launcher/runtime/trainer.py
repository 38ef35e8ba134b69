"""The training loop every recipe shares: accumulation, LR, logging, evaluation, checkpoints.

Read top to bottom: train() prepares the model on its backend, restores the newest checkpoint and
starts the tracker; _loop() then turns once per optimizer step: data, step, log, evaluate, save,
stop; at the end the model is exported. The worker (worker.py) builds the backend and the
recipe's Task and hands them over, with the batch arithmetic the launcher planned.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from launcher.backends.optim import param_groups
from launcher.plan.batch import BatchMath
from launcher.recipe_module import Task
from launcher.rundir.heartbeats import EVALUATING, SAVING, TRAINING
from launcher.rundir.layout import RunDir
from launcher.rundir.record import tracker_run_id
from launcher.runtime import checkpoint as ckpt
from launcher.runtime import live_bytes
from launcher.runtime.device import on_device, to_device
from launcher.runtime.dist import DistEnv, all_reduce_sum, barrier, gather_hosts, gather_rows
from launcher.runtime.evaluation import evaluate_and_log
from launcher.runtime.heartbeat import Heartbeat
from launcher.runtime.metrics import MetricsLog, Progress, StepProgress, console_line, emit, peak_flops
from launcher.runtime.nonfinite import NonFiniteGuard
from launcher.runtime.profiling import StepProfiler, profile_window
from launcher.runtime.rank_timing import RankTiming, Straggler, StragglerWatch
from launcher.runtime.rank_timing import summary as rank_summary
from launcher.runtime.resume import restore, save
from launcher.runtime.run import Run
from launcher.runtime.sampling import GlobalOrder, StepBatches, StreamData
from launcher.runtime.schedule import lr_at
from launcher.runtime.startup import StartupClock
from launcher.runtime.stopping import StopRequest
from launcher.runtime.stuck import arm_stall_dump, disarm_stall_dump, stall_dump_after
from launcher.tracking import make_tracker
from launcher.tracking.alerts import Alerts, NoAlerts
from launcher.tracking.base import NullTracker, SkipLoggedSteps, TrackerContext
from launcher.tracking.nodes import start_node_writer, writes_node_metrics
from launcher.tracking.wandb_tracker import node_label


class Stopped(Exception):
    """Training stopped on a signal after committing a checkpoint."""

    def __init__(self, signum: int, step: int = 0) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step = signum, step


def train(recipe, task: Task, backend, math: BatchMath, env: DistEnv, run_dir: str, startup: StartupClock) -> None:
    heartbeat = Heartbeat(run_dir, env.rank)  # starting: building, restoring (no step deadline yet)
    with live_bytes.trace_training(task.model, env.rank):  # the memory benchmark's count; else nothing
        _train(recipe, task, backend, math, env, run_dir, startup, heartbeat)


def _train(recipe, task: Task, backend, math: BatchMath, env: DistEnv, run_dir: str, startup: StartupClock,
           heartbeat: Heartbeat) -> None:
    _prepare(recipe, task, backend)
    startup.mark("prepare_s")
    root = RunDir(run_dir).checkpoints(recipe.checkpoint.dir)
    checkpoints = ckpt.CheckpointManager(str(root), recipe.checkpoint.keep_last, env.rank, barrier)
    start_step, records, meta = restore(recipe, root, backend, env)
    main = env.rank == 0
    log = MetricsLog(RunDir(run_dir).metrics, main, start_step)
    for record in records:
        log.write({"step": start_step, **record})
    if env.attempt and main:  # torchrun restarted the group after a failure (cluster.max_restarts)
        log.write({"step": start_step, "event": "restart", "attempt": env.attempt, "resumed_from_step": start_step})
        emit(f"restart {env.attempt} of cluster.max_restarts={recipe.cluster.max_restarts}: "
             f"resuming at step {start_step}")
    # The checkpoint's run id wins: a resumed job continues the run it was part of.
    # Only rank 0 tracks and writes checkpoint metadata, so only it needs the id.
    run_id = meta.get("tracker_run_id") or (tracker_run_id(RunDir(run_dir)) if main else "")
    tracker = make_tracker(recipe.tracking, _tracker_context(recipe, math, env, run_dir, run_id), main)
    # tracking.system_metrics=all_nodes: local rank 0 of every other node records its machine in the same run.
    node_writer = start_node_writer(recipe.tracking, run_dir, meta.get("tracker_run_id") or
                                    tracker_run_id(RunDir(run_dir))) \
        if writes_node_metrics(recipe.tracking, env.rank, env.local_rank) else NullTracker()
    # Steps between the checkpoint and the kill were already sent to the tracker by the earlier
    # attempt; exact resume recomputes identical values, so they are not sent twice.
    tracker = SkipLoggedSteps(tracker, log.previous_last_step)
    end_step = recipe.train.steps
    if recipe.train.stop_after_steps:
        end_step = min(end_step, start_step + recipe.train.stop_after_steps)
    alerts = Alerts(recipe.tracking.alerts, recipe.tracking.alert_interval_s, tracker, log.write) if main \
        else NoAlerts()
    run = Run(recipe, task, backend, math, env, run_dir, startup, checkpoints, log, tracker, start_step, end_step,
              run_id, alerts, heartbeat)
    try:
        startup.mark("restore_s")
        _loop(run)
    except Stopped as stopped:
        alerts.send("preemption", stopped.step, f"{Path(run_dir).name}: stopped by {stopped}",
                    f"stopped by {stopped} after step {stopped.step} of {recipe.train.steps}: checkpoint "
                    "committed; a requeued or repeated job resumes there")
        tracker.finish(exit_code=1)
        raise
    except BaseException:
        tracker.finish(exit_code=1)  # a failure: the launcher alerts, with its summary of every rank
        raise
    finally:
        disarm_stall_dump()  # a step that raised left it armed: no stack dump during teardown
        heartbeat.close()  # done: the hang watch expects nothing more of this rank
        node_writer.finish()
    if end_step == recipe.train.steps:
        alerts.send("completion", end_step, f"{Path(run_dir).name}: finished",
                    f"reached step {end_step} of {recipe.train.steps}; the model is in {RunDir(run_dir).export}")
    tracker.finish(exit_code=0)


def _prepare(recipe, task: Task, backend) -> None:
    """The model on its backend: activation checkpointing, the optimizer's parameter groups."""
    if recipe.train.activation_checkpointing:
        enable = getattr(task.model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise ValueError(f"train.activation_checkpointing: the model of {recipe.recipe} has no "
                             "gradient_checkpointing_enable(); set it to false for this recipe")
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    groups = task.param_groups or param_groups(
        task.model, recipe.optimizer.weight_decay, recipe.optimizer.decay_norm_and_bias)
    backend.prepare(task.model, groups)


def _loop(run: Run) -> None:
    """One turn per optimizer step: data, step, log, evaluate, save, stop."""
    recipe = run.recipe
    batches = iter(_loader(run))
    interval = Interval(run.backend.device)
    guard = NonFiniteGuard(recipe.train.on_nonfinite, recipe.train.max_nonfinite_skips, run.backend.device,
                           run.start_step)
    stop = StopRequest()
    # Stops itself after its window; a run stopped inside the window exits without the files.
    window = profile_window(run.end_step - run.start_step, recipe.train.profile_steps if run.main else 0)
    profiler = StepProfiler(RunDir(run.run_dir).profile, run.backend.device, *window)
    if recipe.train.eval_at_start and run.start_step == 0:
        evaluate_and_log(run, 0)
    stall_s = stall_dump_after(recipe.cluster.collective_timeout)
    watch = _watch(run)
    own_schedule = recipe.scheduler.name == "deepspeed"  # the DeepSpeed config's scheduler sets the LR
    for step in range(run.start_step, run.end_step):
        run.heartbeat.beat(step + 1)  # the hang watch sees this rank's step move (one store, no call)
        arm_stall_dump(stall_s)  # a step that never ends leaves this rank's stacks in its log
        # Each rank's randomness (dropout) is a function of the global step and the rank: a resume, on
        # any world size, draws what an uninterrupted run on that size draws.
        seed_step(run.backend.device, step_seed(recipe.seed, step, run.env.rank))
        waiting = time.perf_counter()
        micro_batches = [next(batches) for _ in range(run.math.accumulation)]
        interval.timing.waited_for_data(time.perf_counter() - waiting)
        lr = run.backend.scheduled_lr() if own_schedule else lr_at(step, recipe.optimizer.lr, recipe.train.steps,
                                                                    recipe.scheduler)
        grad_norm = _train_step(run, micro_batches, lr, step, interval, guard)
        live_bytes.step_done()
        profiler.step()
        done = step + 1
        watch.step_progress.tick(done)
        if step == run.start_step and run.main:
            run.startup.mark("first_step_s")  # includes the first batch and torch.compile's compilation
            run.log.write({"step": done, **run.startup.report()})
        if done % recipe.train.log_every == 0 or done == run.end_step:
            _log_interval(run, done, lr, grad_norm, interval, guard, watch)
        paused = time.perf_counter()
        synchronised = _evaluate_and_save(run, done, guard, interval)
        if synchronised:  # step time and throughput are training's own: evaluation and saving excluded
            interval.start += time.perf_counter() - paused
        _stop_if_signalled(run, done, stop, guard, interval, synchronised)
    stop.finish()  # the last step's agreement, in flight: the run is over either way
    watch.step_progress.tick(run.end_step, force=True)
    if run.end_step == recipe.train.steps:
        run.heartbeat.phase(SAVING)  # an export gathers and writes like a save (ZeRO-3: every rank)
        _export(run)
    elif run.main:
        emit(f"stopped early after step {run.end_step} of {recipe.train.steps} (train.stop_after_steps="
             f"{recipe.train.stop_after_steps}): checkpoint committed; run the same command to continue")


@dataclass
class Watch:
    """What the log steps keep between them: progress for the ETA, the ranks' hosts, stragglers."""

    progress: Progress
    step_progress: StepProgress
    hosts: list[str]
    stragglers: StragglerWatch
    skips_alerted: int = 0  # skipped non-finite steps already alerted


def _watch(run: Run) -> Watch:
    train = run.recipe.train
    hosts = gather_hosts()  # every rank calls it: one collective before the first step
    started = float(os.environ.get("LAUNCHER_WORKER_START_TIME", time.time()))
    progress_file = RunDir(run.run_dir).progress if run.main else None
    return Watch(Progress(run.end_step, started), StepProgress(progress_file, run.recipe.train.steps), hosts,
                 StragglerWatch(train.straggler_slowdown, train.straggler_intervals, hosts))


def _loader(run: Run):
    """This rank's micro-batches from `start_step` on, in the order of the global sample stream."""
    task, recipe = run.task, run.recipe
    order = GlobalOrder(len(task.train_data), recipe.seed, task.shuffle, task.lengths, run.math.global_batch)
    sampler = StepBatches(order, run.math.global_batch, run.math.micro, run.env.world_size, run.env.rank,
                          run.start_step, run.end_step)
    # Its own generator: creating a DataLoader iterator otherwise draws from the global RNG, which
    # would shift the dropout stream of a resumed run by one draw.
    workers = task.loader_workers
    return torch.utils.data.DataLoader(StreamData(task.train_data, order), batch_sampler=sampler,
                                       collate_fn=task.collate, num_workers=workers,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                                       pin_memory=run.backend.device.type == "cuda",
                                       generator=torch.Generator().manual_seed(recipe.seed))


class Interval:
    """Between two log steps: the summed loss (on the device until read), its target count (known
    on the host: count_targets), the steps and the time."""

    def __init__(self, device) -> None:
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.count = 0.0
        self.start, self.steps = time.perf_counter(), 0
        self.timing = RankTiming(device)  # this rank's own data and forward time

    def reset(self) -> None:
        self.loss.zero_()
        self.count = 0.0
        self.start, self.steps = time.perf_counter(), 0


def _train_step(run: Run, micro_batches: list, lr: float, step: int, interval: Interval, guard: NonFiniteGuard):
    """Forward and backward over the micro-batches, one optimizer update; the grad norm (device)."""
    task, backend = run.task, run.backend
    device = backend.device
    # Normalise by the targets of the whole global batch (all ranks, all micro-steps), so
    # uneven micro-batches give exactly the gradient of one big batch. Backends average
    # gradients over ranks, hence the factor world_size. Alone, the count is known on the host.
    targets = float(sum(task.count_targets(b) for b in micro_batches))
    if run.env.world_size == 1:
        scale = 1.0 / targets
    else:
        scale = run.env.world_size / all_reduce_sum(on_device(targets, device))
    # The losses go straight into the interval's sum, unless the step may yet be skipped.
    skipping = guard.policy == "skip"
    loss_of_step = torch.zeros_like(interval.loss) if skipping else interval.loss
    for k, batch in enumerate(micro_batches):
        batch = to_device(batch, device, backend.input_dtype)
        with backend.autocast(), interval.timing.forward():
            loss_sum, _ = task.loss(backend.model, batch)
        backend.backward(loss_sum * (scale if isinstance(scale, float) else scale.to(loss_sum.dtype)),
                         last=k == run.math.accumulation - 1)
        loss_of_step += loss_sum.detach()
    grad_norm = backend.step(lr, step)
    if guard.after_step(step + 1, grad_norm, backend):
        if skipping:
            interval.loss += loss_of_step
        interval.count += targets
    interval.steps += 1
    return grad_norm


def _log_interval(run: Run, done: int, lr: float, grad_norm, interval: Interval, guard: NonFiniteGuard,
                  watch: Watch) -> None:
    """The log step: one all_gather of every rank's loss sum, non-finite flag, target count and own
    timings, then metrics.jsonl, tracker, console."""
    task, math, device = run.task, run.math, run.backend.device
    elapsed = time.perf_counter() - interval.start
    host_values = on_device([interval.count, *interval.timing.take()], device)
    rows = gather_rows(torch.cat([interval.loss.reshape(1), guard.flag(interval.loss).reshape(1), host_values]))
    totals = [sum(row[i] for row in rows) for i in (0, 2, 1)]  # loss, count, flag: summed in rank order
    per_rank = [(row[3], row[4]) for row in rows]
    samples_per_s = interval.steps * math.global_batch / elapsed
    record = {
        "step": done, "loss": totals[0] / totals[1] if totals[1] else float("nan"), "lr": lr,
        **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
        "samples": done * math.global_batch,
        "samples_per_s": samples_per_s, "step_time_s": elapsed / interval.steps,
    }
    if task.tokens_per_sample:
        record["tokens_per_s"] = samples_per_s * task.tokens_per_sample
    peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None, run.backend.precision)
    if task.flops_per_sample and peak:
        record["mfu"] = samples_per_s * task.flops_per_sample / (peak * run.env.world_size)
    if device.type == "cuda":
        record["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if guard.skipped:
        record["skipped_steps"] = guard.skipped
    if run.env.world_size > 1:
        record.update(rank_summary(per_rank, interval.steps, watch.hosts))
    run.log.write(record)
    run.tracker.log(record, done)
    if run.main:
        emit(console_line(record, run.recipe.train.steps, watch.progress.text(done, record["step_time_s"])))
    _report_stragglers(run, done, watch.stragglers.check(per_rank, interval.steps))
    if totals[2] > 0 or guard.skipped > watch.skips_alerted:
        watch.skips_alerted = guard.skipped
        what = "stopping (train.on_nonfinite=stop)" if totals[2] > 0 else \
            f"{guard.skipped} step(s) skipped so far (train.on_nonfinite=skip)"
        run.alerts.send("nonfinite", done, f"{Path(run.run_dir).name}: non-finite loss or gradient",
                        f"the loss or gradient norm became NaN or inf by step {done}: {what}")
    guard.check(done, totals[2], run.checkpoints.root)  # after the line: a NaN is seen where it happened
    interval.reset()


def _report_stragglers(run: Run, done: int, stragglers: list[Straggler]) -> None:
    """One line on the console, a record in metrics.jsonl and the trackers, per straggler found."""
    for straggler in stragglers:
        run.log.write({"step": done, "straggler": straggler.record()})
        run.tracker.log({"straggler_rank": straggler.rank, "straggler_slowdown": straggler.slowdown}, done)
        if run.main:
            line = straggler.line(run.recipe.train.straggler_intervals)
            emit(line)
            run.alerts.send("straggler", done, f"{Path(run.run_dir).name}: straggler rank {straggler.rank}", line)


def _eval_due(run: Run, done: int) -> bool:
    every = run.recipe.train.eval_every
    return bool(every and done % every == 0) or done == run.recipe.train.steps


def _save_due(run: Run, done: int) -> bool:
    every = run.recipe.checkpoint.every_steps
    return bool(every and done % every == 0) or done == run.end_step


def _evaluate_and_save(run: Run, done: int, guard: NonFiniteGuard, interval: Interval) -> bool:
    """Evaluate and save when due; True when either happened (the ranks synchronised)."""
    evaluating, saving = _eval_due(run, done), _save_due(run, done)
    if evaluating or saving:
        disarm_stall_dump()  # evaluation and saving run on their own clocks
        guard.check_agreed(done, run.checkpoints.root, interval.loss)  # nothing non-finite is evaluated or saved
    if evaluating:
        run.heartbeat.phase(EVALUATING)
        evaluate_and_log(run, done)
    if saving:
        run.heartbeat.phase(SAVING)
        save(run, done)
    if evaluating or saving:
        run.heartbeat.phase(TRAINING)
    return evaluating or saving


def _stop_if_signalled(run: Run, done: int, stop: StopRequest, guard: NonFiniteGuard, interval: Interval,
                       synchronised: bool) -> None:
    """All ranks agree whether one was signalled (by the step before, or by now after a save); if
    so, they stop here with a checkpoint."""
    signum = stop.agreed(now=synchronised)
    if signum is None:
        return
    if not _save_due(run, done):  # never a second save of the same step
        disarm_stall_dump()
        guard.check_agreed(done, run.checkpoints.root, interval.loss)
        run.heartbeat.phase(SAVING)
        save(run, done)
    if run.main:
        emit(f"stopped by {signal.Signals(signum).name} after step {done}: checkpoint committed; "
             "run the same command to resume")
    raise Stopped(signum, done)


def _export(run: Run) -> None:
    task, backend = run.task, run.backend
    if task.export is not None:
        state = backend.export_state_dict()  # collective under ZeRO-3: every rank calls it
        if run.main:
            _check_whole(state)
            directory = RunDir(run.run_dir).export
            directory.mkdir(parents=True, exist_ok=True)
            task.export(backend.unwrapped(), state, str(directory))
        barrier()
    if run.main and run.recipe.tracking.log_model and task.export is not None:
        run.tracker.log_model(str(RunDir(run.run_dir).export), f"model-{Path(run.run_dir).name}")


def seed_step(device, seed: int) -> None:
    """Seed the generators this rank's step draws from: the CPU's and its own device's. Not
    torch.manual_seed, which seeds every accelerator type torch knows, queueing CUDA's when CUDA is
    not initialised: 0.32 ms a call on this CPU machine (bench/run.py --cpu), against 1.3 us."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()] \
            .manual_seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one rank's step (torch takes 64 bits)."""
    return (seed * 1_000_003 + step * 100_003 + rank + 1) % 2**64


def _check_whole(state: dict) -> None:
    """An exported tensor with no elements is a shard that was never gathered (a ZeRO-3 partition):
    the export would look finished and hold no model."""
    empty = [key for key, value in state.items() if torch.is_tensor(value) and value.numel() == 0]
    if empty:
        raise RuntimeError(f"the export has {len(empty)} empty tensor(s) ({', '.join(empty[:5])}): the weights were "
                           "not gathered from their shards; nothing was exported")


def _tracker_context(recipe, math, env: DistEnv, run_dir: str, run_id: str) -> TrackerContext:
    label = node_label() if recipe.tracking.system_metrics == "all_nodes" else ""
    return TrackerContext(recipe.tracking, run_dir, run_id, Path(run_dir).name, _tracker_config(recipe, math, env),
                          label)


def _tracker_config(recipe, math, env: DistEnv) -> dict:
    from launcher.config.load import recipe_to_dict
    from launcher.secrets import redact_env

    config = recipe_to_dict(recipe)
    config["cluster"]["env"] = redact_env(config["cluster"]["env"])
    config["launch"] = {"world_size": env.world_size, "nodes": env.nodes,
                        "processes_per_node": env.local_world_size, "backend": recipe.backend.name,
                        "zero_stage": recipe.backend.zero_stage if recipe.backend.name == "deepspeed" else None,
                        "strategy": recipe.backend.strategy if recipe.backend.name == "accelerate" else None,
                        "micro_batch": math.micro, "accumulation": math.accumulation,
                        "global_batch": math.global_batch}
    return config



