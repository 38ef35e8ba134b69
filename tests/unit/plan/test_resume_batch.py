"""A world size the batch does not divide, for a run directory with a checkpoint: the refusal names
the world sizes it resumes on (batch.global is kept by the checkpoint, so changing it is no fix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.config.errors import RecipeError
from launcher.plan.prepare import Placement, prepare

RECIPE = "recipe: mlp_regression\nbatch: {global: 24, micro: 2}\ntrain: {steps: 20}\nscheduler: {warmup_steps: 1}\n"


def _run_dir_with_checkpoint(tmp_path: Path, global_batch: int = 24) -> Path:
    run_dir = tmp_path / "run"
    step = run_dir / "checkpoints" / "step-00000010"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text(json.dumps({"meta": {"step": 10, "world_size": 4, "global_batch": global_batch},
                                                    "files": {}}))
    (run_dir / "checkpoints" / "latest").write_text("step-00000010\n")
    return run_dir


def _refusal(tmp_path: Path, run_dir: Path, nproc: int) -> str:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    with pytest.raises(RecipeError) as caught:
        prepare(str(recipe), (), Placement(nproc=nproc, run_dir=str(run_dir)), environ={})
    return str(caught.value)


def test_the_refusal_names_the_sizes_the_checkpoint_resumes_on_and_the_micro_batches_that_fit(tmp_path):
    run_dir = _run_dir_with_checkpoint(tmp_path)
    text = _refusal(tmp_path, run_dir, nproc=5)
    assert "`batch.global`: 24 is not divisible by batch.micro x world size = 2 x (1 node x 5 processes) = 10" in text
    assert (f"HINT: {run_dir}/checkpoints/step-00000010 (step 10, 4 ranks) keeps batch.global=24: with "
            "batch.micro=2 it resumes on 1, 2, 3, 4, 6, 12 processes in all") in text
    assert "set batch.global" not in text
    assert "on 8, set batch.micro to one of [1, 3]" in _refusal(tmp_path, run_dir, nproc=8)


def test_without_a_checkpoint_the_hint_offers_another_global_batch(tmp_path):
    text = _refusal(tmp_path, tmp_path / "fresh", nproc=5)
    assert "HINT: set batch.global to a multiple of 10" in text
