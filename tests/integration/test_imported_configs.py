"""Real DeepSpeed configs from the corpus (tests/data/configs) run on 2 CPU processes as written: the
losses equal the run of the same recipe with the values the plan took written as recipe keys (rel
1e-5), run.json and the checkpoint record what ran, ZeRO-3's export holds the trained weights, a
DeepSpeed scheduler sets (and logs) its own LR, and a config that cannot run here is refused
before any rank starts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import FIXTURES, ROOT, exported_state, launch, max_relative_difference, train_records, write_recipe

pytestmark = pytest.mark.slow  # a minute of real DeepSpeed runs

CORPUS = ROOT / "tests" / "data" / "configs"
RECIPE = f"""\
recipe: {FIXTURES / "uneven_recipe.py"}
model: {{hidden: 16, dropout: 0.0}}
data: {{samples: 96}}
optimizer: {{lr: 1e-2}}
train: {{steps: 5, log_every: 1}}
backend: {{name: deepspeed}}
"""
# config -> the recipe keys that say the same (what `launcher plan` shows it took), and overrides
# both runs get (batch.micro for configs whose micro-batch is "auto", here the recipe's default)
CASES = {
    "deepspeed/deepspeed/autotuning/config_templates/template_zero0.json": ["backend.zero_stage=0"],
    "deepspeedexamples/training/autotuning/hf/dsconfigs/ds_config_z1.json": ["backend.zero_stage=1"],
    "deepspeedexamples/training/autotuning/hf/dsconfigs/ds_config_z2.json": ["backend.zero_stage=2"],
    "deepspeedexamples/training/autotuning/hf/dsconfigs/ds_config_z3.json": ["backend.zero_stage=3"],
    "accelerate/tests/deepspeed/ds_config_zero3_model_only.json": ["backend.zero_stage=3",
                                                                   "backend.offload_params=true", "batch.micro=1"],
    "deepspeedexamples/training/gan/gan_deepspeed_config.json": ["backend.zero_stage=0", "optimizer.lr=0.0002",
                                                                "optimizer.betas=[0.5,0.999]", "optimizer.eps=1e-8",
                                                                "batch.global=64", "batch.micro=32"],
}
COMMON = ["batch.global=16", "batch.micro=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("imported")
    recipe = write_recipe(base / "r.yaml", RECIPE)
    done: dict[str, Path] = {}

    def get(name: str, *overrides: str) -> Path:
        if name not in done:
            result = launch(recipe, base / name, *overrides, nproc=2, timeout=600)
            assert result.returncode == 0, f"{name}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
            done[name] = base / name
        return done[name]

    return get


def _common(relative: str) -> list[str]:
    """What both runs get: the recipe's batch, unless the config sets one; no optimizer.lr of the
    recipe's when the config sets its own (both would be a conflict, refused)."""
    common = [] if any(o.startswith("batch.") for o in CASES[relative]) else COMMON
    return common + (["~optimizer.lr"] if any(o.startswith("optimizer.lr") for o in CASES[relative]) else [])


# Two configs in the default set (ZeRO-3 with parameter offload; the GAN's own optimizer and batch);
# the other four, the same path with another stage, in the opt-in heavy set, which CI runs too.
IN_DEFAULT = {"ds_config_zero3_model_only", "gan_deepspeed_config"}


@pytest.mark.parametrize("relative", [pytest.param(r, marks=() if Path(r).stem in IN_DEFAULT else pytest.mark.heavy)
                                      for r in sorted(CASES)], ids=lambda r: Path(r).stem)
def test_a_real_config_runs_as_the_recipe_keys_it_means(runs, relative):
    name = Path(relative).stem
    with_config = runs(f"{name}-config", f"backend.deepspeed_config={CORPUS / relative}", *_common(relative))
    recipe_only = runs(f"{name}-recipe", *_common(relative), *CASES[relative])
    config_losses = [r["loss"] for r in train_records(with_config)]
    recipe_losses = [r["loss"] for r in train_records(recipe_only)]
    assert len(config_losses) == 5 and config_losses == pytest.approx(recipe_losses, rel=1e-5)
    # run.json, the checkpoint and the config DeepSpeed was given say what ran
    fixed = json.loads((with_config / "run.json").read_text())["fixed"]
    stage = next(int(o.split("=")[1]) for o in CASES[relative] if o.startswith("backend.zero_stage"))
    assert fixed["backend.zero_stage"] == stage
    manifest = json.loads((with_config / "checkpoints" / "step-00000005" / "manifest.json").read_text())
    assert manifest["meta"]["zero_stage"] == stage
    given = json.loads((with_config / "deepspeed_config.json").read_text())
    assert given["zero_optimization"]["stage"] == stage
    if stage == 3:  # the export gathered the partitions: whole tensors, the trained weights
        exported, reference = exported_state(with_config), exported_state(recipe_only)
        assert all(t.numel() > 0 for t in exported.values())
        assert max_relative_difference(exported, reference) <= 1e-5


def test_a_deepspeed_scheduler_runs_as_deepspeeds_and_its_lr_is_the_one_logged(runs):
    """transformers' ZeRO-2 config: offload, "auto" everywhere, and DeepSpeed's WarmupLR (log warm-up
    over scheduler.warmup_steps to optimizer.lr, then constant)."""
    config = CORPUS / "transformers" / "tests" / "deepspeed" / "ds_config_zero2.json"
    run_dir = runs("hf-zero2", f"backend.deepspeed_config={config}", "scheduler.warmup_steps=3", *COMMON)
    logged = [r["lr"] for r in train_records(run_dir)]
    # DeepSpeed's WarmupLR: warmup_min_lr before its first step, then min + (max - min) log(k) / log(W)
    # after k steps, max from W on. The same every world size: it steps once per optimizer step.
    expected = [0.0] + [1e-2 * min(1.0, math.log(k) / math.log(3)) for k in range(1, 5)]
    assert logged == pytest.approx(expected, rel=1e-9)
    recipe = (run_dir / "recipe.yaml").read_text()
    assert "name: deepspeed" in recipe and "WarmupLR" in recipe
    given = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert given["scheduler"]["params"] == {"warmup_min_lr": 0, "warmup_max_lr": 0.01, "warmup_num_steps": 3}
    assert given["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_deepspeed_in_bf16_trains_the_templates_float_inputs(runs):
    """DeepSpeed's bf16 casts the weights; the template's float inputs follow them (they crashed the
    first forward), and the run follows the fp32 one within bf16's precision."""
    run_dir = runs("bf16", "precision=bf16", *COMMON)
    losses = [r["loss"] for r in train_records(run_dir)]
    fp32 = [r["loss"] for r in train_records(runs("fp32", *COMMON))]
    assert len(losses) == 5 and losses == pytest.approx(fp32, rel=2e-2) and losses != fp32
    assert all(t.dtype == torch.bfloat16 for t in exported_state(run_dir).values())


def test_a_config_that_cannot_run_here_is_refused_before_any_rank_starts(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    config = CORPUS / "transformers" / "tests" / "deepspeed" / "ds_config_zero3.json"  # fp16, on a CPU
    result = launch(recipe, tmp_path / "run", "~optimizer.lr", f"backend.deepspeed_config={config}", nproc=2)
    assert result.returncode == 2 and "fp16 needs a GPU" in result.stderr
    assert "ds_config_zero3.json:3" in result.stderr  # where fp16 was set
    assert not (tmp_path / "run").exists()  # nothing written, nothing started
