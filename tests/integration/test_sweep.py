"""`launcher sweep` on this machine and `launcher compare`: real runs, the table and the PNG read back."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, launcher_env

pytestmark = pytest.mark.slow
GRID = ["optimizer.lr=1e-3,3e-3", "batch.global=32,64", "train.steps=40", "train.eval_every=20",
        "cluster.nproc_per_node=1"]


def _sweep(run_dir: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["launcher", "sweep", "mlp-tiny", *GRID, "--run-dir", str(run_dir), *extra], cwd=ROOT,
                          env=launcher_env(), capture_output=True, text=True, timeout=timeout)


def _png_pixels(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=float)


def test_a_two_by_two_sweep_makes_four_runs_a_four_row_table_and_a_plot(tmp_path):
    root = tmp_path / "grid"
    result = _sweep(root, "-k", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    # Issue 32: how many points, before the first one starts.
    assert result.stderr.splitlines()[0] == "launcher: sweep 4 points: optimizer.lr (2) x batch.global (2); 2 at a time"
    assert sorted(p.name for p in root.glob("task-*")) == ["task-0", "task-1", "task-2", "task-3"]
    points = json.loads((root / "sweep.json").read_text())["points"]
    assert [p["values"] for p in points] == [["optimizer.lr=1e-3", "batch.global=32"],
                                             ["optimizer.lr=1e-3", "batch.global=64"],
                                             ["optimizer.lr=3e-3", "batch.global=32"],
                                             ["optimizer.lr=3e-3", "batch.global=64"]]
    for index, point in enumerate(points):  # each point trained with its own values
        recipe = yaml.safe_load((root / f"task-{index}" / "recipe.yaml").read_text())
        lr, global_batch = (value.split("=")[1] for value in point["values"])
        assert recipe["optimizer"]["lr"] == float(lr) and recipe["batch"]["global"] == int(global_batch)
    compared = subprocess.run(["launcher", "compare", str(root), "-o", str(tmp_path / "c.png")], cwd=ROOT,
                              env=launcher_env(), capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    rows = [line for line in compared.stdout.splitlines() if line.startswith("task-")]
    assert len(rows) == 4 and "eval_loss final" in compared.stdout and "eval_loss best" in compared.stdout
    assert rows[0].startswith("task-0: optimizer.lr=1e-3 batch.global=32")
    for png in (tmp_path / "c.png", root / "compare.png"):
        pixels = _png_pixels(png)
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 600 and pixels.std() > 10  # drawn, not blank


def test_a_sweep_stopped_after_two_points_runs_only_the_other_two_again(tmp_path):
    root = tmp_path / "grid"
    proc = subprocess.Popen(["launcher", "sweep", "mlp-tiny", *GRID, "--run-dir", str(root)], cwd=ROOT,
                            env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            statuses = [p["status"] for p in json.loads((root / "sweep.json").read_text())["points"]]
        except (OSError, ValueError):
            statuses = []
        if statuses.count("done") >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    statuses = [p["status"] for p in json.loads((root / "sweep.json").read_text())["points"]]
    assert statuses[:2] == ["done", "done"] and "done" not in statuses[2:], statuses
    finished = {k: (root / f"task-{k}" / "metrics.jsonl").read_bytes() for k in (0, 1)}
    again = _sweep(root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 4 points already done; running the other 2" in again.stderr
    started = [line.split()[2].rstrip(":") for line in again.stderr.splitlines()
               if line.startswith("launcher: sweep task-") and "optimizer.lr=" in line]
    assert started == ["task-2", "task-3"], again.stderr
    assert {k: (root / f"task-{k}" / "metrics.jsonl").read_bytes() for k in (0, 1)} == finished  # untouched
    assert [p["status"] for p in json.loads((root / "sweep.json").read_text())["points"]] == ["done"] * 4


def test_a_bad_point_is_refused_before_anything_runs(tmp_path):
    root = tmp_path / "grid"
    result = subprocess.run(["launcher", "sweep", "mlp-tiny", "batch.global=32,30", "--run-dir", str(root)],
                            cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "sweep point task-1: batch.global=30" in result.stderr and "batch.global" in result.stderr
    assert not root.exists()


SECRETS = ("sekret-wandb-0123456789", "sekret-openai-987654")


def test_secret_overrides_reach_every_point_and_nothing_the_sweep_records_or_prints(tmp_path):
    """Issue 32: a sweep used to write `cluster.env.WANDB_API_KEY=...` verbatim into sweep.json."""
    root = tmp_path / "grid"
    result = subprocess.run(
        ["launcher", "sweep", "mlp-tiny", "optimizer.lr=1e-3,3e-3", "train.steps=10", "train.eval_every=5",
         "scheduler.warmup_steps=1", "cluster.nproc_per_node=1", f"cluster.env.WANDB_API_KEY={SECRETS[0]}",
         f"cluster.env={{OPENAI_API_KEY: {SECRETS[1]}, PLAIN_SETTING: shown}}", "--run-dir", str(root)],
        cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
        leaked = [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert not leaked, leaked
    record = json.loads((root / "sweep.json").read_text())
    assert record["fixed"][-1] == "cluster.env={PLAIN_SETTING: shown}"
    for task in ("task-0", "task-1"):  # each point's launcher got both, as overrides (redacted in its records)
        env = yaml.safe_load((root / task / "recipe.yaml").read_text())["cluster"]["env"]
        assert env == {"WANDB_API_KEY": "<redacted>", "OPENAI_API_KEY": "<redacted>", "PLAIN_SETTING": "shown"}


def test_a_secret_as_an_axis_is_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "grid"
    result = subprocess.run(["launcher", "sweep", "mlp-tiny", "cluster.env.HF_TOKEN=hf_aaaaaa,hf_bbbbbb",
                             "--run-dir", str(root)], cwd=ROOT, env=launcher_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "`cluster.env.HF_TOKEN`: a secret cannot be a sweep axis" in result.stderr
    assert "hf_aaaaaa" not in result.stdout + result.stderr and not root.exists()
