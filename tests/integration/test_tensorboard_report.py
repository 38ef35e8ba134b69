"""TensorBoard beside W&B, read back with TensorBoard's own reader; `launcher report`'s PNG read
back as pixels. Real runs: 2 processes, stopped half-way and resumed."""

from __future__ import annotations

import subprocess

import numpy as np
from matplotlib import image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launcher.cli.report import read_history
from tests.helpers import ROOT, launch, launcher_env, train_records, write_recipe
from tests.integration.test_tracking import RECIPE, offline_runs


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_and_wandb_log_the_same_steps_once_across_a_resume_and_report_plots_them(tmp_path):
    both = RECIPE.replace("tags: [ci]", "tags: [ci], backends: [wandb, tensorboard]")
    recipe = write_recipe(tmp_path / "r.yaml", both)
    run_dir = tmp_path / "run"
    first = launch(recipe, run_dir, "train.stop_after_steps=5", nproc=2, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(recipe, run_dir, nproc=2, timeout=300)
    assert second.returncode == 0 and "resumed from" in second.stdout, second.stderr[-3000:]

    scalars = _scalars(run_dir / "tensorboard")
    logged = [(r["step"], r["loss"]) for r in train_records(run_dir)]
    assert [step for step, _ in scalars["loss"]] == list(range(1, 13))  # each step once, both invocations
    assert np.allclose([v for _, v in scalars["loss"]], [loss for _, loss in logged], rtol=1e-6)
    assert {"lr", "grad_norm", "samples_per_s"} <= set(scalars)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per invocation
    assert len(offline_runs(run_dir)) >= 1  # W&B still logged beside it

    done = subprocess.run(["launcher", "report", str(run_dir)], cwd=ROOT, env=launcher_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    png = run_dir / "report.png"
    assert done.stdout.strip() == f"wrote {png}"
    pixels = image.imread(png)
    assert pixels.shape[:2] == (800, 1200)
    assert pixels[..., :3].std() > 0.05  # curves and text, not a blank canvas
    assert read_history(run_dir / "metrics.jsonl").starts == [5]  # the resume is marked after step 5


def test_tensorboard_alone_needs_no_wandb_and_a_bad_backend_is_named(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("mode: offline", "mode: disabled")
                          .replace("tags: [ci]", "backends: [tensorboard]"))
    result = launch(recipe, tmp_path / "tb", "train.steps=3", "checkpoint.every_steps=0", nproc=1, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [s for s, _ in _scalars(tmp_path / "tb" / "tensorboard")["loss"]] == [1, 2, 3]
    assert not (tmp_path / "tb" / "wandb").exists()
    bad = launch(recipe, tmp_path / "bad", "tracking.backends=[tensorbord]", nproc=1, timeout=60)
    assert bad.returncode == 2 and "`tracking.backends`: unknown tracker `tensorbord`" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_report_without_metrics_is_a_clear_error(tmp_path):
    done = subprocess.run(["launcher", "report", str(tmp_path)], cwd=ROOT, env=launcher_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "no metrics.jsonl" in done.stderr
