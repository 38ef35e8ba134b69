"""A run directory belongs to one experiment: real `launcher run` processes against real run
directories, refused before anything starts or is written (issue: trust at the edges)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, launch, launcher_env, metrics, train_records, write_recipe

RECIPE = """\
recipe: mlp_regression
model: {hidden: 16}
data: {samples: 256, eval_samples: 64}
optimizer: {lr: 1e-2}
batch: {global: 16, micro: 4}
train: {steps: 10, log_every: 5}
checkpoint: {every_steps: 5}
"""


def _run(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["launcher", *args], cwd=cwd, env=launcher_env(), capture_output=True, text=True,
                          timeout=timeout)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root and its content: what a refused command must leave as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One real 2-process run, 10 steps, checkpoints at 5 and 10: copied by the tests that refuse it."""
    base = tmp_path_factory.mktemp("trained")
    recipe = write_recipe(base / "recipe.yaml", RECIPE)
    result = launch(recipe, base / "run", nproc=2, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return base


def _copy(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(trained, tmp_path / "t")
    return tmp_path / "t" / "recipe.yaml", tmp_path / "t" / "run"


def test_same_file_name_in_two_directories_gets_two_run_directories(tmp_path):
    planned = []
    for name, lr in (("exp1", "1e-2"), ("exp3", "3e-2")):
        (tmp_path / name).mkdir()
        write_recipe(tmp_path / name / "config.yaml", RECIPE.replace("lr: 1e-2", f"lr: {lr}"))
        result = _run(tmp_path, "plan", f"{name}/config.yaml", "--json")
        assert result.returncode == 0, result.stderr
        planned.append(Path(json.loads(result.stdout)["plan"]["run_dir"]))
    assert planned[0] != planned[1] and all(p.parent == tmp_path / "runs" for p in planned), planned
    for name, run_dir in zip(("exp1", "exp3"), planned, strict=True):
        digest = hashlib.sha256(str((tmp_path / name / "config.yaml").resolve()).encode()).hexdigest()[:8]
        assert run_dir.name == f"config-{digest}"  # the file's name, and which file: stable across runs


@pytest.mark.parametrize("names", [("日本", "中文")])
def test_non_ascii_names_are_kept_and_distinct(tmp_path, names):
    planned = []
    for name in names:
        write_recipe(tmp_path / "r.yaml", RECIPE + f"name: {name}\n")
        result = _run(tmp_path, "plan", "r.yaml", "--json")
        assert result.returncode == 0, result.stderr
        planned.append(json.loads(result.stdout)["plan"]["run_dir"])
    assert planned == [str(tmp_path / "runs" / name) for name in names]


@pytest.mark.parametrize("name", ["..", ".", "/etc", "a/b", ".hidden"])
def test_a_name_that_would_leave_output_dir_is_refused(tmp_path, name):
    write_recipe(tmp_path / "recipe.yaml", RECIPE + f"name: '{name}'\n")
    before = _tree(tmp_path)
    result = _run(tmp_path, "run", "recipe.yaml", "--nproc", "2")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "`name`" in result.stderr and "not a safe directory name" in result.stderr
    assert _tree(tmp_path) == before and not (tmp_path / "runs").exists()


def test_run_dir_holding_the_users_files_is_refused(tmp_path):
    (tmp_path / "logs" / "ranks").mkdir(parents=True)
    (tmp_path / "logs" / "ranks" / "notes.txt").write_text("mine")
    write_recipe(tmp_path / "recipe.yaml", "# my comments\n" + RECIPE)
    (tmp_path / "data.csv").write_text("1,2\n")
    before = _tree(tmp_path)
    result = _run(tmp_path, "run", "recipe.yaml", "--nproc", "2", "--run-dir", ".")
    assert result.returncode == 2
    assert "holds files that no launcher run made" in result.stderr and "data.csv" in result.stderr
    assert _tree(tmp_path) == before


def test_two_launchers_into_one_run_directory_one_trains_the_other_is_refused(tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml",
                          RECIPE.replace("steps: 10, log_every: 5", "steps: 100, log_every: 1"))
    argv = ["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(tmp_path / "run")]
    first = subprocess.Popen(argv, cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "run.json").exists():  # the first holds the lock from here on
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = subprocess.run(argv, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2
    assert f"is in use by another launcher: pid {first.pid} on host" in second.stderr, second.stderr
    steps = [r["step"] for r in train_records(tmp_path / "run")]
    assert steps == list(range(1, 101)), steps  # one row per logged step: nobody else wrote


def test_finished_run_with_fewer_steps_or_another_model_is_refused_untouched(trained, tmp_path):
    recipe, run = _copy(trained, tmp_path)
    before = _tree(run)
    for overrides, expected in (
        (["train.steps=5"], "train.steps: 10 (this run) -> 5 (now)"),
        (["model.hidden=32"], "model.hidden: 16 (this run) -> 32 (now)"),
        (["optimizer.name=sgd"], 'optimizer.name: "adamw" (this run) -> "sgd" (now)'),
        (["checkpoint.dir=" + str(tmp_path / "elsewhere")], "checkpoint.dir"),
    ):
        result = launch(recipe, run, *overrides, nproc=2, timeout=120)
        assert result.returncode == 2, (overrides, result.stderr[-2000:])
        assert expected in result.stderr, result.stderr
        assert _tree(run) == before, overrides  # recipe.yaml still describes the checkpoints
    # Even on purpose, a checkpoint past the new end is refused.
    result = launch(recipe, run, "train.steps=5", "scheduler.warmup_steps=0", "--allow-schedule-change", nproc=2)
    assert result.returncode == 2 and "past train.steps=5" in result.stderr, result.stderr
    assert _tree(run) == before


def test_a_flipped_byte_in_a_real_checkpoint_stops_the_resume_naming_the_file(trained, tmp_path):
    recipe, run = _copy(trained, tmp_path)
    model = run / "checkpoints" / "step-00000010" / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one float, same size
    model.write_bytes(bytes(data))
    result = launch(recipe, run, nproc=2, timeout=300)
    assert result.returncode != 0
    assert "model.pt: its content differs from the manifest" in result.stderr, result.stderr[-3000:]
    assert [r["step"] for r in train_records(run)] == [5, 10]  # nothing trained on the damaged state
    assert not (run / "export").exists() or (run / "export").stat().st_mtime < model.stat().st_mtime
    status = _run(ROOT, "status", str(run))
    assert "latest checkpoint: DAMAGED" in status.stdout and "model.pt" in status.stdout, status.stdout


@pytest.mark.parametrize("damage", ["garbage", "symlink", "manifest"])
def test_a_damaged_pointer_or_manifest_is_one_clear_error_in_run_and_status(trained, tmp_path, damage):
    recipe, run = _copy(trained, tmp_path)
    checkpoints = run / "checkpoints"
    if damage == "garbage":
        (checkpoints / "latest").write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "symlink":
        (checkpoints / "latest").unlink()
        (checkpoints / "latest").symlink_to("/")
    else:
        (checkpoints / "step-00000010" / "manifest.json").write_text("{not json")
    result = launch(recipe, run, nproc=2, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("\n") <= 3, result.stderr
    status = _run(ROOT, "status", str(run))
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    assert "latest checkpoint: DAMAGED" in status.stdout, status.stdout


def test_a_diverging_run_stops_at_the_nan_and_keeps_its_last_finite_checkpoint(tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", RECIPE.replace("lr: 1e-2", "lr: 1e-2, grad_clip: 0")
                          .replace("steps: 10, log_every: 5", "steps: 12, log_every: 1"))
    first = launch(recipe, tmp_path / "run", nproc=2, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    # Continue with an LR that sends the weights to infinity at once.
    result = launch(recipe, tmp_path / "run", "train.steps=20", "optimizer.lr=1e30", "--allow-schedule-change",
                    nproc=2, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode not in (0, 2), output[-2000:]
    assert "became non-finite (NaN or inf) between steps" in output, output[-3000:]
    assert "The last checkpoint" in output and "step-00000012, was finite" in output
    records = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert not math.isfinite(records[-1]["loss"]) and records[-1]["step"] < 15, records[-3:]  # logged, not hidden
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000012"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-00000010",
                                                                                       "step-00000012"]
    # The schedule change was made on purpose and is on record; the run resumed where it stood.
    assert "resumed from" in output and "step-00000012 at step 12" in output
    changed = json.loads((tmp_path / "run" / "run.json").read_text())["changes"][-1]["keys"]
    assert changed["train.steps"] == [12, 20] and changed["optimizer.lr"] == [0.01, 1e30]


@pytest.mark.heavy  # the same loop path as the stop policy, with the update skipped in the backend
def test_skip_policy_skips_non_finite_updates_and_stops_past_the_budget(tmp_path):
    # Under Accelerate with `skip`, updates whose gradient norm is not finite are not applied.
    recipe = write_recipe(tmp_path / "recipe.yaml", RECIPE.replace("lr: 1e-2", "lr: 1e30, grad_clip: 0"))
    result = launch(recipe, tmp_path / "run", "train.log_every=1", "train.on_nonfinite=skip",
                    "train.max_nonfinite_skips=3", nproc=2, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode not in (0, 2), output[-2000:]
    assert "4 steps skipped on a non-finite gradient norm, more than train.max_nonfinite_skips=3" in output, output
    logged = [r for r in metrics(tmp_path / "run") if "loss" in r]
    # Step 1 applied lr 1e30; steps 2-4 were skipped, one count each (their intervals applied no step).
    assert [r.get("skipped_steps", 0) for r in logged] == [0, 1, 2, 3], logged
    assert math.isfinite(logged[0]["loss"]) and not any(math.isfinite(r["grad_norm"]) for r in logged[1:])
    assert not (tmp_path / "run" / "export").exists()


def test_a_checkpoint_directory_shared_by_two_run_directories_is_refused_unless_the_first_moved(tmp_path):
    """Issue 32: two experiments with their own run directories and one checkpoint.dir; the second
    used to "resume" the first's checkpoint, train nothing, exit 0 and export the first's model."""
    shared = tmp_path / "shared-checkpoints"
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("checkpoint: {every_steps: 5}",
                                                              f"checkpoint: {{every_steps: 5, dir: {shared}}}"))
    first = launch(recipe, tmp_path / "first", nproc=1)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _tree(shared)

    other = launch(recipe, tmp_path / "second", "seed=1", nproc=1)
    assert other.returncode == 2
    assert f"checkpoint.dir {shared} holds the checkpoints of another experiment, the run {tmp_path / 'first'}" \
        in other.stderr and "seed: 0 (this run) -> 1 (now)" in other.stderr
    assert "Traceback" not in other.stderr and not (tmp_path / "second").exists() and _tree(shared) == before

    twin = launch(recipe, tmp_path / "twin", nproc=1)  # the same experiment, while the first still exists
    assert twin.returncode == 2 and "which still exists: both would write and resume the same steps" in twin.stderr

    (tmp_path / "first").rename(tmp_path / "moved")  # the project moved: its checkpoints follow it
    moved = launch(recipe, tmp_path / "moved", "train.steps=15", "--allow-schedule-change", nproc=1)
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert [r["step"] for r in train_records(tmp_path / "moved")] == [5, 10, 15]


def test_a_moved_project_continues_its_run_and_says_so(tmp_path):
    """Issue 32: after `mv projA projB`, "run the same command to continue" started again at step 0
    in a new run directory (the default name hashes the recipe file's path), without a word."""
    project = tmp_path / "projA"
    project.mkdir()
    (project / "exp.yaml").write_text(RECIPE)
    first = _run(project, "run", "exp.yaml", "--nproc", "1", "train.stop_after_steps=5")
    assert first.returncode == 0, first.stderr[-2000:]
    (before,) = (project / "runs").iterdir()
    project.rename(tmp_path / "projB")
    moved = tmp_path / "projB"
    again = _run(moved, "run", "exp.yaml", "--nproc", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.name for p in (moved / "runs").iterdir()] == [before.name]  # the same run directory, no new one
    assert f"continuing {moved / 'runs' / before.name}: its recipe was {project / 'exp.yaml'}, now " \
           f"{moved / 'exp.yaml'} (moved)" in again.stderr
    assert [r["step"] for r in train_records(moved / "runs" / before.name)] == [5, 10]
    copy = tmp_path / "copy"  # a copy keeps its original: it is another project, with its own run
    shutil.copytree(moved, copy)
    fresh = _run(copy, "run", "exp.yaml", "--nproc", "1", "train.stop_after_steps=5")
    assert fresh.returncode == 0 and "continuing" not in fresh.stderr
    assert len(list((copy / "runs").iterdir())) == 2  # the copied run and a new one
