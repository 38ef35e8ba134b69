"""The run directory's owner: names, what makes a directory a run's, identity, the lock, secrets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from launcher.rundir import RunDir, name_problem, run_name
from launcher.rundir.claim import RunDirError, check_run_dir, claim_run_dir
from launcher.rundir.identity import Identity
from launcher.rundir.layout import foreign_entries
from launcher.rundir.lock import RunLock

RESOLVED = {"recipe": "launcher.recipes.mlp_regression", "name": "", "seed": 0, "precision": "auto",
            "model": {"hidden": 16, "layers": 2}, "data": {"samples": 256, "workers": 0},
            "optimizer": {"name": "adamw", "lr": 0.01, "betas": [0.9, 0.999]},
            "scheduler": {"name": "cosine", "warmup_steps": 0}, "batch": {"global": 16, "micro": 4},
            "train": {"steps": 10, "log_every": 5}, "backend": {"name": "accelerate", "strategy": "ddp",
                                                                "zero_stage": 2},
            "checkpoint": {"dir": "", "every_steps": 5}, "cluster": {"nproc_per_node": 2, "env": {}}}


def _changed(**sections) -> dict:
    resolved = json.loads(json.dumps(RESOLVED))
    for section, values in sections.items():
        resolved[section].update(values)
    return resolved


@pytest.mark.parametrize("name", ["日本", "中文", "run-1.5e-4", "bert_base+lr=3e-4", "Ünïcødé"])
def test_safe_names_of_any_script_are_kept(name):
    assert name_problem(name) is None and run_name(name, "recipes/x.yaml") == name


@pytest.mark.parametrize("name", [".", "..", "/etc", "a/b", "a\\b", ".hidden", "-rf", "a b", "x\0y", "é" * 150])
def test_names_that_are_not_one_safe_directory_are_refused(name):
    assert name_problem(name)


def test_default_names_differ_for_same_file_names_in_different_directories(tmp_path):
    first, second = tmp_path / "exp1" / "config.yaml", tmp_path / "exp3" / "config.yaml"
    assert run_name("", str(first)) != run_name("", str(second))
    assert run_name("", str(first)).startswith("config-") and run_name("", str(first)) == run_name("", str(first))
    assert run_name("", "recipes/mlp-tiny.yaml", shipped=True) == "mlp-tiny"
    assert run_name("", str(tmp_path / ".. weird name!.yaml")).startswith("weird-name-")


def test_a_directory_is_a_runs_when_empty_made_by_the_launcher_or_from_before_run_json(tmp_path):
    assert foreign_entries(tmp_path / "missing") == []
    assert foreign_entries(tmp_path) == []
    (tmp_path / ".lock").write_text("")
    assert foreign_entries(tmp_path) == []
    (tmp_path / "recipe.yaml").write_text("# the user's own recipe\n")
    (tmp_path / "logs").mkdir()
    assert foreign_entries(tmp_path) == ["logs", "recipe.yaml"]
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "environment.json").write_text("{}")
    assert foreign_entries(tmp_path) == []  # a run directory of an earlier launcher
    (tmp_path / "recipe.yaml").unlink()
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "anything").write_text("a recipe's own output")
    assert foreign_entries(tmp_path) == []


def test_identity_names_fixed_and_schedule_changes_and_ignores_the_rest():
    recorded = Identity.of(RESOLVED)
    assert recorded.changes(Identity.of(_changed(train={"log_every": 1}, cluster={"nproc_per_node": 8}))) == ([], [])
    fixed, schedule = recorded.changes(Identity.of(_changed(model={"hidden": 32}, optimizer={"lr": 0.1})))
    assert [c.render() for c in fixed] == ["model.hidden: 16 (this run) -> 32 (now)"]
    assert [c.key for c in schedule] == ["optimizer.lr"]
    assert [c.key for c in recorded.changes(Identity.of(_changed(optimizer={"name": "sgd"})))[0]] == ["optimizer.name"]
    # The other backend's format key does not count; the chosen one does.
    assert recorded.changes(Identity.of(_changed(backend={"zero_stage": 3}))) == ([], [])
    assert [c.key for c in recorded.changes(Identity.of(_changed(backend={"strategy": "fsdp"})))[0]] == \
        ["backend.strategy"]
    # A module's exempt keys, and keys a newer schema added, are not changes.
    exempt = Identity.of(RESOLVED, {"data.workers"})
    assert exempt.changes(Identity.of(_changed(data={"workers": 4}), {"data.workers"})) == ([], [])
    assert Identity.of(RESOLVED).changes(Identity.of(_changed(train={"new_key": 1}))) == ([], [])


def _record(run: RunDir, resolved: dict, *, step: int) -> None:
    """A run directory with run.json and a committed checkpoint at `step`."""
    from launcher.runtime.checkpoint import CheckpointManager

    run.root.mkdir(parents=True, exist_ok=True)
    identity = Identity.of(resolved)
    run.identity.write_text(json.dumps({"kind": "run", "fixed": identity.fixed, "schedule": identity.schedule,
                                        "recipe_file": "/x/recipe.yaml"}))
    def write(files) -> None:
        with files.open("model.bin") as handle:
            handle.write(b"m" * 64)

    if step:
        CheckpointManager(str(run.checkpoints()), 2, 0, lambda: None).save(step, {"step": step}, write)


def test_claims_refuse_another_experiment_and_allow_a_changed_schedule_on_purpose(tmp_path):
    run = RunDir(tmp_path / "run")
    _record(run, RESOLVED, step=10)
    with pytest.raises(RunDirError, match=r"holds another experiment \(from /x/recipe.yaml, trained to step 10\)"):
        check_run_dir(run, Identity.of(_changed(model={"hidden": 32})), 10, allow_schedule_change=True)
    with pytest.raises(RunDirError, match="--allow-schedule-change"):
        check_run_dir(run, Identity.of(_changed(train={"steps": 20})), 10, allow_schedule_change=False)
    changes = check_run_dir(run, Identity.of(_changed(train={"steps": 20})), 10, allow_schedule_change=True)
    assert [c.key for c in changes] == ["train.steps"]
    # Nothing trained yet: nothing to mismatch, any recipe may take the directory.
    assert check_run_dir(run, Identity.of(_changed(model={"hidden": 32})), 0, allow_schedule_change=False) == []


def test_a_refused_claim_of_a_new_directory_leaves_nothing(tmp_path):
    run = RunDir(tmp_path / "new" / "run")
    claim = claim_run_dir(run, Identity.of(RESOLVED), "/x/recipe.yaml", 0)
    assert run.lock.exists() and claim.created
    claim.release()  # never committed: as if refused after locking
    assert not run.root.exists()
    claim = claim_run_dir(run, Identity.of(RESOLVED), "/x/recipe.yaml", 0)
    claim.commit()
    claim.release()
    assert json.loads(run.identity.read_text())["recipe_file"] == "/x/recipe.yaml"


_HOLDER = """
import sys, time
from pathlib import Path
from launcher.rundir.lock import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    run = RunDir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run.lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"in use by another launcher: pid {holder.pid} on host "
                                              f"{socket.gethostname()}"):
            claim_run_dir(run, Identity.of(RESOLVED), "/x/recipe.yaml", 0)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(run.lock)
    lock.acquire()  # the kernel dropped the dead holder's lock
    lock.release()


_LAUNCHER_WITH_SECRETS = """
import sys, time
from launcher.engines.process import _secrets_file
with _secrets_file(sys.argv[1], {"HF_TOKEN": "hf-secret"}):
    print("written", flush=True)
    time.sleep(60)
"""


def test_the_secrets_file_of_a_killed_launcher_is_removed(tmp_path):
    path = tmp_path / ".secrets.json"
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER_WITH_SECRETS, str(path)], stdout=subprocess.PIPE,
                                text=True)
    assert launcher.stdout.readline().strip() == "written"
    assert json.loads(path.read_text()) == {"HF_TOKEN": "hf-secret"} and (path.stat().st_mode & 0o777) == 0o600
    launcher.send_signal(signal.SIGKILL)  # no finally runs
    launcher.wait()
    deadline = time.monotonic() + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not path.exists()


def test_the_reaper_never_removes_a_newer_runs_secrets(tmp_path):
    from launcher.engines.secrets_reaper import remove_if_same

    path = tmp_path / ".secrets.json"
    path.write_text("{}")
    old_inode = path.stat().st_ino
    path.unlink()
    path.write_text('{"new": "run"}')
    if path.stat().st_ino == old_inode:  # the file system reused the inode: make it differ
        os.rename(path, tmp_path / "keep")
        path.write_text('{"new": "run"}')
    assert not remove_if_same(str(path), old_inode) and path.exists()
    assert remove_if_same(str(path), path.stat().st_ino) and not path.exists()


_HOLDER_WITH_CHILD = """
import subprocess, sys, time
from pathlib import Path
from launcher.rundir.lock import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire()
# Like torchrun after the launcher's death: a child holding the lock while it stops.
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"], pass_fds=(lock.fd,))
print("locked", flush=True)
time.sleep(60)
"""


def test_a_killed_launchers_stopping_processes_are_waited_for_not_refused(tmp_path, capsys):
    run = RunDir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER_WITH_CHILD, str(run.lock)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    claim = claim_run_dir(run, Identity.of(RESOLVED), "/x/recipe.yaml", 0)  # waits for the child, then takes it
    claim.release()
    assert 0.3 < time.monotonic() - started < 30
    assert f"launcher that is gone (pid {holder.pid} on host" in capsys.readouterr().err
