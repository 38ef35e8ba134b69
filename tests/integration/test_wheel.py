"""A real wheel, installed without the source tree: the shipped recipes and hostfiles come with it.

Users install with `pip install .`, a wheel or `pip install git+...`, not only editable. The wheel
is built from a copy of the checkout (nothing written into it) and installed with `--target`, and
the commands run from an empty directory with only that installation on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, launcher_env, train_records

pytestmark = pytest.mark.slow

_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "runs", ".ruff_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (work / "dist").glob("launcher-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "launcher/_shipped/recipes/mlp-tiny.yaml" in names
    assert "launcher/_shipped/hostfiles/example-4node.txt" in names
    target = work / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def _launcher(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # The installed copy comes first on the path; the editable checkout's finder comes after it.
    env = launcher_env(PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    done = subprocess.run([sys.executable, "-c", "import launcher; print(launcher.__file__)"], cwd=tmp_path,
                          env=launcher_env(PYTHONPATH=str(installed)), capture_output=True, text=True)
    assert Path(done.stdout.strip()).is_relative_to(installed), done.stdout + done.stderr


def test_a_wheel_lists_copies_and_runs_its_shipped_recipes(installed, tmp_path):
    listed = _launcher(installed, tmp_path, "ls")
    assert listed.returncode == 0, listed.stderr
    for name in ("mlp-tiny", "bert-pretrain-tiny", "gpt-finetune-tiny", "resnet-transfer-tiny"):
        assert f"  {name} " in listed.stdout, listed.stdout

    copied = _launcher(installed, tmp_path, "cp", "mlp-tiny", "mine.yaml")
    assert copied.returncode == 0 and (tmp_path / "mine.yaml").read_text().startswith("#"), copied.stderr

    ran = _launcher(installed, tmp_path, "run", "mlp-tiny", "--nproc", "1", "train.steps=4",
                    "scheduler.warmup_steps=1")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert [r["step"] for r in train_records(tmp_path / "runs" / "mlp-tiny")] == [4]  # log_every 10: the last
    assert not os.path.exists(installed / "runs")  # the run went to the user's directory


def test_a_wheel_plans_with_its_example_hostfile(installed, tmp_path):
    hostfile = installed / "launcher" / "_shipped" / "hostfiles" / "example-4node.txt"
    planned = _launcher(installed, tmp_path, "plan", "mlp-tiny", "--hostfile", str(hostfile), "batch.global=512")
    assert planned.returncode == 0, planned.stderr
    assert "pdsh" in planned.stdout or "ssh" in planned.stdout
