"""The run directory: what ran, how, and where its outputs go.

Layout:
    recipe.yaml        the resolved recipe (overrides applied), what every worker reads
    plan.json          the launch plan (secrets redacted)
    environment.json   host, versions, git sha, environment (secrets redacted)
    logs/              torchrun/ (per-attempt, per-rank logs), ranks/ (where each rank runs),
                       failure.json (the failure summary), nccl-trace/ (NCCL flight recorder)
    checkpoints/       committed checkpoints and the `latest` pointer
    metrics.jsonl      one JSON object per logged step (rank 0)
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from launcher.engines.failure import rank_records_dir
from launcher.engines.node_report import agent_errors_dir
from launcher.secrets import REDACTED, is_secret_name, redact_env

_TRACKED_PACKAGES = ("torch", "deepspeed", "accelerate", "transformers", "wandb", "launcher")


def default_run_dir(output_dir: str, name: str) -> str:
    # Stable per recipe name: re-running the same command (or a Slurm requeue) finds its checkpoints.
    return str(Path(output_dir) / name)


def run_name(recipe_name: str, recipe_path: str) -> str:
    name = recipe_name or Path(recipe_path).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def write_run_dir(run_dir: str, resolved: dict, plan: dict) -> Path:
    path = Path(run_dir)
    (path / "logs").mkdir(parents=True, exist_ok=True)
    # Rank records and agent errors describe the current job only (the failure reports read them).
    shutil.rmtree(rank_records_dir(path), ignore_errors=True)
    shutil.rmtree(agent_errors_dir(run_dir), ignore_errors=True)
    (path / "logs" / "failure.json").unlink(missing_ok=True)
    _write(path / "recipe.yaml", yaml.safe_dump(resolved, sort_keys=False))
    _write(path / "plan.json", json.dumps(plan, indent=2) + "\n")
    _write(path / "environment.json", json.dumps(environment_record(), indent=2) + "\n")
    return path


def environment_record() -> dict:
    versions = {}
    for package in _TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": redact_argv(sys.argv),
        "cwd": os.getcwd(),
        "git_sha": git_sha(),
        "packages": versions,
        "env": redact_env(dict(os.environ)),
    }


def redact_argv(argv: list[str]) -> list[str]:
    """`cluster.env.HF_TOKEN=abc` on a command line is a secret too."""
    out = []
    for arg in argv:
        key, sep, _ = arg.partition("=")
        out.append(f"{key}={REDACTED}" if sep and is_secret_name(key.rsplit(".", 1)[-1]) else arg)
    return out


def git_sha() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
