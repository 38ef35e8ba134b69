"""Evaluation: the held-out loss and the recipe's metrics, reduced over every rank, and samples."""

from __future__ import annotations

import json
from math import exp

import torch

from launcher.recipe_module import Task
from launcher.rundir.layout import RunDir
from launcher.runtime.device import to_device
from launcher.runtime.dist import DistEnv, all_reduce_sum
from launcher.runtime.metrics import console_line, emit
from launcher.runtime.run import Run


def evaluate_and_log(run: Run, step: int) -> None:
    """Evaluate, draw the recipe's artifacts, log the metrics and the generated samples."""
    task, tracker = run.task, run.tracker
    metrics, tensors = evaluate(task, run.backend, run.env, run.math.micro)
    if tensors and task.eval_artifacts is not None and run.main:
        for name, path in task.eval_artifacts(tensors, step, run.run_dir):
            tracker.log_image(name, path, step)
    if metrics:
        record = {"step": step, **metrics}
        run.log.write(record)
        tracker.log(metrics, step)
        if run.main:
            emit(console_line(record, run.recipe.train.steps))
    if task.generate_samples is not None:
        _log_samples(task.generate_samples(run.backend.model), step, run.run_dir, tracker, run.main)


def evaluate(task: Task, backend, env: DistEnv, micro: int) -> tuple[dict, dict]:
    """Mean loss over the eval split (each rank scores every world_size-th sample), plus the
    recipe's metrics, each a (sum, count) pair reduced over all ranks before dividing."""
    if task.eval_data is None or len(task.eval_data) == 0:
        return {}, {}
    model = backend.model
    model.eval()
    totals = torch.zeros(2, device=backend.device, dtype=torch.float64)
    indices = list(range(env.rank, len(task.eval_data), env.world_size))
    micro = max(1, micro)
    extra: dict[str, tuple] = {}
    with torch.no_grad():
        batches = [task.collate([task.eval_data[i] for i in indices[j: j + micro]])
                   for j in range(0, len(indices), micro)]
        batches = [to_device(b, backend.device, backend.input_dtype) for b in batches]
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
    with open(RunDir(run_dir).samples, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"step": step, **row}) + "\n")
    for row in rows:
        emit(f"sample [{row['mode']}] {row['prompt']!r} -> {row['text']!r}")
    columns = ["step", *rows[0].keys()]
    tracker.log_table("samples", columns, [[step, *row.values()] for row in rows], step)
