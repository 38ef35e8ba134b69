"""Batch and step arithmetic: the global batch is fixed by the recipe, accumulation is derived.

global = micro x accumulation x world size. When that does not divide we refuse and print every
factor, rather than silently changing the batch (and with it the meaning of the LR).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from launcher.config.errors import Problem


@dataclass(frozen=True)
class BatchMath:
    world_size: int
    micro: int
    accumulation: int
    global_batch: int
    optimizer_steps: int
    warmup_steps: int
    samples_seen: int
    tokens_per_sample: int | None
    tokens_seen: int | None

    def rows(self) -> list[tuple[str, str]]:
        def fmt(n: int | None) -> str:
            return "-" if n is None else f"{n:,}"

        return [
            ("world size", fmt(self.world_size)),
            ("micro batch / process", fmt(self.micro)),
            ("gradient accumulation", fmt(self.accumulation)),
            ("global batch", f"{self.global_batch:,} = {self.micro} x {self.accumulation} x {self.world_size}"),
            ("optimizer steps", fmt(self.optimizer_steps)),
            ("warmup steps", fmt(self.warmup_steps)),
            ("samples seen", fmt(self.samples_seen)),
            ("tokens / sample", fmt(self.tokens_per_sample)),
            ("tokens seen", fmt(self.tokens_seen)),
        ]


def layout_text(procs_by_node: tuple[int, ...]) -> str:
    """`2 nodes x 4 processes`, or `2 nodes with 2+1 processes` when nodes differ."""
    nodes = len(procs_by_node)
    where = f"{nodes} node{'s' if nodes > 1 else ''}"
    if len(set(procs_by_node)) > 1:
        return f"{where} with {'+'.join(map(str, procs_by_node))} processes"
    nproc = procs_by_node[0]
    return f"{where} x {nproc} process{'es' if nproc > 1 else ''}"


def batch_math(global_batch: int, micro: int, procs_by_node: tuple[int, ...],
               steps: int, warmup: int, tokens_per_sample: int | None) -> BatchMath:
    """Raise ValueError(Problem) when global is not micro x accumulation x world. Only the world
    size (the sum over nodes) enters the arithmetic: nodes may run different process counts."""
    world_size = sum(procs_by_node)
    per_step = micro * world_size
    if global_batch % per_step:
        raise ValueError(Problem(
            "batch.global",
            f"{global_batch} is not divisible by batch.micro x world size = {micro} x "
            f"({layout_text(procs_by_node)}) = {per_step}; {global_batch} / {per_step} = {global_batch / per_step:g}",
            _divisible_hint(global_batch, micro, world_size)))
    samples = steps * global_batch
    return BatchMath(
        world_size=world_size, micro=micro, accumulation=global_batch // per_step,
        global_batch=global_batch, optimizer_steps=steps, warmup_steps=warmup,
        samples_seen=samples, tokens_per_sample=tokens_per_sample,
        tokens_seen=samples * tokens_per_sample if tokens_per_sample else None)


def plan_math(plan_file: Path, world_size: int) -> BatchMath:
    """The arithmetic the launcher planned (plan.json), for the world the engine started."""
    math = BatchMath(**json.loads(plan_file.read_text(encoding="utf-8"))["math"])
    if math.world_size != world_size:
        raise RuntimeError(f"{plan_file} plans {math.world_size} processes, the engine started {world_size}: "
                           "the run directory's plan is not this job's")
    return math


def _divisible_hint(global_batch: int, micro: int, world: int) -> str:
    per_step = micro * world
    lower = max(per_step, global_batch // per_step * per_step)
    options = sorted({lower, lower + per_step})
    hint = "set batch.global to a multiple of " + f"{per_step} (e.g. {' or '.join(map(str, options))})"
    if global_batch % world == 0:
        micros = [m for m in range(1, global_batch // world + 1) if (global_batch // world) % m == 0]
        hint += f", or batch.micro to one of {micros[-6:]}"
    else:
        hint += f"; batch.global must at least be a multiple of the world size {world}"
    return hint


def deepspeed_batch_problems(raw: dict, math: BatchMath) -> list[Problem]:
    """A DeepSpeed config's gradient_accumulation_steps must be what the plan derives for this world
    size (its train_batch_size and micro batch were taken into batch.global and batch.micro when
    the recipe was read): anything else would silently change the batch. The refusal offers the
    recipe values that keep the config's batch."""
    steps = raw.get("gradient_accumulation_steps")
    if steps is None or steps == math.accumulation:
        return []
    kept = math.micro * steps * math.world_size if isinstance(steps, int) and steps > 0 else None
    keep = f"; or keep the config's {steps} steps at this world size: batch.global={kept}" if kept else ""
    return [Problem(
        "backend.deepspeed_config.gradient_accumulation_steps",
        f"{steps!r} disagrees with the plan: global batch {math.global_batch} = micro {math.micro} x accumulation "
        f"{math.accumulation} x world size {math.world_size}",
        f"remove it from the DeepSpeed config: the plan derives it from batch.global for any world size{keep}")]
