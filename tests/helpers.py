"""Shared by every test set: the tiny recipe, writing recipe files, running the real `launcher`
console script (real torchrun, real engines) and reading results back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def launcher_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def launch(recipe: Path | str, run_dir: Path, *overrides: str, nproc: int = 1, timeout: int = 600,
           env: dict[str, str] | None = None, command: str = "run") -> subprocess.CompletedProcess:
    argv = ["launcher", command, str(recipe), "--nproc", str(nproc), "--run-dir", str(run_dir), *overrides]
    return subprocess.run(argv, cwd=ROOT, env=env or launcher_env(), capture_output=True, text=True,
                          timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in metrics(run_dir) if "loss" in r]


def exported_state(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "export" / "model.pt", weights_only=True)


def max_relative_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for key in a:
        x, y = a[key].double(), b[key].double()
        worst = max(worst, float((x - y).norm() / y.norm().clamp_min(1e-30)))
    return worst


def wait_for_step(run_dir: Path, step: int, timeout: float = 240,
                  proc: subprocess.Popen | None = None) -> None:
    """Until metrics.jsonl has a record at `step` or later; fails after `timeout` s, or at once if
    `proc` (the run) has exited before getting there."""
    deadline = time.monotonic() + timeout
    while not ((run_dir / "metrics.jsonl").exists() and any(r.get("step", 0) >= step for r in metrics(run_dir))):
        assert time.monotonic() < deadline, f"the run never reached step {step}"
        if proc is not None and proc.poll() is not None:
            output = proc.stdout.read()[-3000:] if proc.stdout else ""
            raise AssertionError(f"the run exited ({proc.returncode}) before step {step}:\n{output}")
        time.sleep(0.1)


# The smallest valid recipe (the MLP on generated data), for tests that change one thing of it.
TINY_RECIPE = """\
recipe: mlp_regression
model: {hidden: 8}
data: {samples: 64}
batch: {global: 16, micro: 4}
train: {steps: 5}
"""


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
