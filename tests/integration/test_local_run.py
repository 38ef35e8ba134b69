"""`launcher run` end to end: real torchrun, 2 processes on CPU (gloo), the run directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers import ROOT, launch, launcher_env, train_records, write_recipe

SECRET = "wandb-secret-0123456789abcdef"


def test_two_process_run_trains_and_records_everything(tmp_path):
    run_dir = tmp_path / "run"
    env = launcher_env(WANDB_API_KEY=SECRET)
    result = launch(ROOT / "recipes" / "mlp-tiny.yaml", run_dir, "train.steps=60", "train.eval_every=0",
                    "cluster.env.HF_TOKEN=" + SECRET, f"cluster.env={{API_KEY: {SECRET}x, PLAIN: ok}}", nproc=2,
                    env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = train_records(run_dir)
    assert [r["step"] for r in records] == list(range(10, 61, 10))
    assert records[-1]["loss"] < records[0]["loss"] / 3, records  # measured: 1.74 -> 0.19
    assert "[rank0]: step 60/60" in result.stdout
    assert "[rank1]" not in result.stdout  # console shows rank 0 only
    for name in ("recipe.yaml", "plan.json", "environment.json", "export/model.pt", "checkpoints/latest"):
        assert (run_dir / name).exists(), name
    rank_logs = sorted(p.parent.name for p in (run_dir / "logs").rglob("stdout.log"))
    assert rank_logs == ["0", "1"]
    # The secret was in the environment and on the command line; it is in no file we wrote.
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
    argv = json.loads((run_dir / "environment.json").read_text())["argv"]
    assert "cluster.env={API_KEY: <redacted>, PLAIN: ok}" in argv  # a secret inside a mapping override too
    assert SECRET not in result.stdout + result.stderr
    status = _status(run_dir)
    assert "state: finished; attempt 0" in status and "last step 60/60" in status, status
    assert f"latest checkpoint: {run_dir / 'checkpoints' / 'step-00000060'}" in status


def test_job_failure_is_the_exit_status(tmp_path):
    module = tmp_path / "broken.py"
    module.write_text(
        "from dataclasses import dataclass\nDESCRIPTION = 'fails'\n"
        "@dataclass(frozen=True)\nclass ModelConfig:\n    pass\n"
        "@dataclass(frozen=True)\nclass DataConfig:\n    pass\n"
        "def build(recipe, ctx):\n    raise RuntimeError('boom in build')\n")
    recipe = write_recipe(tmp_path / "broken.yaml", "recipe: ./broken.py\nbatch: {global: 4, micro: 2}\n")
    result = launch(recipe, tmp_path / "run", nproc=2, timeout=300)
    assert result.returncode != 0
    assert "boom in build" in result.stdout + result.stderr + _logs(tmp_path / "run")
    status = _status(tmp_path / "run")
    assert "state: failed: rank " in status and "boom in build" in status, status
    assert "latest checkpoint: none committed yet" in status


def _status(run_dir: Path) -> str:
    done = subprocess.run(["launcher", "status", str(run_dir)], env=launcher_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _logs(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in run_dir.rglob("*.log"))
