"""The engine room on CPU with real engines: accumulation, backends, LR curve, exact resume.

All runs use a fixture recipe whose samples carry 1-4 targets each, so micro-batches have uneven
target counts: equal parameters prove the loss is normalised over the whole global batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from launcher.config.schema import SchedulerConfig
from launcher.runtime.schedule import lr_at
from tests.helpers import (
    FIXTURES,
    exported_state,
    launch,
    max_relative_difference,
    metrics,
    train_records,
    write_recipe,
)

pytestmark = pytest.mark.slow  # minutes of real training; CI runs it, `-m "not slow"` skips it

STEPS = 8
RECIPE = f"""\
recipe: {FIXTURES / "uneven_recipe.py"}
model: {{hidden: 16, dropout: 0.0}}
data: {{samples: 96}}
optimizer: {{name: adamw, lr: 1e-2, weight_decay: 0.01}}
scheduler: {{name: cosine, warmup_steps: 2, min_lr_ratio: 0.1}}
batch: {{global: 16, micro: 4}}
train: {{steps: {STEPS}, log_every: 1}}
checkpoint: {{every_steps: 0}}
"""

SGD = ["optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true"]
# name -> (nproc, overrides)
RUNS = {
    "acc-1x16": (1, ["batch.micro=16"]),
    "acc-1x4x4": (1, ["batch.micro=4"]),
    "acc-1x8x2": (1, ["batch.micro=8"]),
    "acc-2x4x2": (2, ["batch.micro=4"]),
    "fsdp-2x4x2": (2, ["backend.strategy=fsdp"]),
    "ds0-2x4x2": (2, ["backend.name=deepspeed", "backend.zero_stage=0"]),
    "ds1-2x4x2": (2, ["backend.name=deepspeed", "backend.zero_stage=1"]),
    "ds2-2x4x2": (2, ["backend.name=deepspeed", "backend.zero_stage=2"]),
    "ds3-2x4x2": (2, ["backend.name=deepspeed", "backend.zero_stage=3"]),
    "ds2-offload-2x4x2": (2, ["backend.name=deepspeed", "backend.zero_stage=2", "backend.offload_optimizer=true"]),
    "ds3-offload-2x4x2": (2, ["backend.name=deepspeed", "backend.zero_stage=3", "backend.offload_optimizer=true",
                              "backend.offload_params=true"]),
    "acc-2x4x2-sgd": (2, [*SGD]),
    "ds3-2x4x2-sgd": (2, ["backend.name=deepspeed", "backend.zero_stage=3", *SGD]),
    "ds2-1x16": (1, ["backend.name=deepspeed", "backend.zero_stage=2", "batch.micro=16"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each run happens once per module, on first use."""
    base = tmp_path_factory.mktemp("equivalence")
    recipe = write_recipe(base / "uneven.yaml", RECIPE)
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            nproc, overrides = RUNS[name]
            run_dir = base / name
            result = launch(recipe, run_dir, *overrides, nproc=nproc, timeout=600)
            assert result.returncode == 0, f"{name}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
            done[name] = run_dir
        return done[name]

    return get


@pytest.mark.parametrize("name", ["acc-1x4x4", "acc-1x8x2", "acc-2x4x2"])
def test_accelerate_accumulation_and_world_size_equivalence(runs, name):
    reference = exported_state(runs("acc-1x16"))
    assert max_relative_difference(exported_state(runs(name)), reference) <= 1e-5


# Variants whose path another default case takes run in the opt-in heavy set (CI runs it).
HEAVY = pytest.mark.heavy


@pytest.mark.parametrize("name", ["ds2-2x4x2"])
def test_deepspeed_accumulation_and_world_size_equivalence(runs, name):
    reference = exported_state(runs("ds2-1x16"))
    assert max_relative_difference(exported_state(runs(name)), reference) <= 1e-5


@pytest.mark.parametrize("name", ["ds0-2x4x2", "ds1-2x4x2", "ds2-2x4x2", "ds3-2x4x2", "ds2-offload-2x4x2",
                                  "ds3-offload-2x4x2", "fsdp-2x4x2"])
def test_deepspeed_zero_stages_and_fsdp_agree_with_accelerate_ddp(runs, name):
    reference = exported_state(runs("acc-2x4x2"))
    state = exported_state(runs(name))
    assert set(state) == set(reference)
    assert max_relative_difference(state, reference) <= 1e-5


@pytest.mark.parametrize("name", ["ds3-2x4x2-sgd"])
def test_zero_with_sgd_agrees_with_accelerate_ddp(runs, name):
    """DeepSpeed refuses non-Adam optimizers under ZeRO unless told; ours are exact there."""
    reference = exported_state(runs("acc-2x4x2-sgd"))
    assert max_relative_difference(exported_state(runs(name)), reference) <= 1e-5
    assert max_relative_difference(reference, exported_state(runs("acc-2x4x2"))) > 1e-3  # SGD is not AdamW


def test_runs_actually_train(runs):
    before_after = [r["loss"] for r in train_records(runs("acc-1x16"))]
    assert len(before_after) == STEPS
    assert before_after[-1] < before_after[0]


@pytest.mark.parametrize("name", ["acc-1x16", "acc-2x4x2", "ds2-2x4x2"])
def test_lr_curve_is_the_closed_form_for_every_world_size(runs, name):
    cfg = SchedulerConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.1)
    logged = {r["step"]: r["lr"] for r in train_records(runs(name))}
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step, lr in logged.items():
        assert lr == pytest.approx(lr_at(step - 1, 1e-2, STEPS, cfg), rel=1e-12)


def _ids(run_dir: Path, rank: int) -> list[list[int]]:
    return [list(map(int, line.split())) for line in (run_dir / f"ids-rank{rank}.txt").read_text().splitlines()]


@pytest.mark.parametrize("backend", [["backend.name=accelerate"], pytest.param(["backend.strategy=fsdp"], marks=HEAVY),
                                     ["backend.name=deepspeed", "backend.zero_stage=2"]],
                         ids=["accelerate-ddp", "accelerate-fsdp", "deepspeed-zero2"])
def test_exact_resume_mid_epoch_and_accumulation(tmp_path, backend):
    # dropout makes the per-rank RNG state part of what must be restored
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("dropout: 0.0", "dropout: 0.2"))
    common = [*backend, "batch.micro=2", "train.steps=10"]  # 2 procs x micro 2 x accumulation 4
    whole = tmp_path / "whole"
    assert launch(recipe, whole, *common, nproc=2).returncode == 0
    split = tmp_path / "split"
    first = launch(recipe, split, *common, "train.stop_after_steps=3", nproc=2)  # 48 of 96: mid-epoch
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (split / "export").exists()
    second = launch(recipe, split, *common, nproc=2)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "step-00000003" in second.stdout

    whole_losses = [(r["step"], r["loss"]) for r in train_records(whole)]
    split_losses = [(r["step"], r["loss"]) for r in train_records(split)]
    assert split_losses == whole_losses  # bitwise: float equality of every step's loss
    a, b = exported_state(whole), exported_state(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for rank in (0, 1):
        assert _ids(split, rank) == _ids(whole, rank)  # 0 duplicated, 0 skipped, same order
    seen = sorted(i for rank in (0, 1) for batch in _ids(split, rank) for i in batch)
    assert len(seen) == 10 * 16
    assert [r["step"] for r in metrics(split) if "loss" in r] == list(range(1, 11))


@pytest.mark.parametrize("name, world", [(name, 1) for name in ("constant", "linear", "exponential", "step")]
                         + [("linear", 2)])  # the LR is a function of the step: one 2-rank case shows it
def test_every_schedule_logs_the_closed_form_lr(tmp_path, name, world):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    schedule = [f"scheduler.name={name}", "scheduler.warmup_steps=2", "scheduler.min_lr_ratio=0.1",
                "scheduler.gamma=0.5", "scheduler.step_size=2", "scheduler.decay_steps=3"]
    result = launch(recipe, tmp_path / "run", *schedule, f"batch.micro={16 // (2 * world)}", nproc=world)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = SchedulerConfig(name=name, warmup_steps=2, min_lr_ratio=0.1, gamma=0.5, step_size=2, decay_steps=3)
    logged = {r["step"]: r["lr"] for r in train_records(tmp_path / "run")}
    assert sorted(logged) == list(range(1, STEPS + 1))
    assert len(set(logged.values())) >= (2 if name == "constant" else 3)  # warmup, then the decay moves
    for step, lr in logged.items():
        assert lr == pytest.approx(lr_at(step - 1, 1e-2, STEPS, cfg), rel=1e-12)
