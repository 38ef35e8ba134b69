"""Faults with real processes and real signals (docs/docs/faults.md items 1, 2, 3, 5, 9, 10, 11, 12, 15)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    FIXTURES,
    ROOT,
    exported_state,
    launch,
    launcher_env,
    max_relative_difference,
    metrics,
    train_records,
    wait_for_step,
    write_recipe,
)

RECIPE = f"""\
recipe: {FIXTURES / "uneven_recipe.py"}
model: {{hidden: 16, dropout: 0.2}}
data: {{samples: 96, step_delay: 0.1}}
optimizer: {{lr: 1e-2}}
batch: {{global: 16, micro: 4}}
train: {{steps: 14, log_every: 1}}
checkpoint: {{every_steps: 5}}
"""


def _ids(run_dir: Path, rank: int) -> list[list[int]]:
    return [list(map(int, line.split())) for line in (run_dir / f"ids-rank{rank}.txt").read_text().splitlines()]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _start(recipe: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    argv = ["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(run_dir), *overrides]
    return subprocess.Popen(argv, cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


# The FSDP resume on another world size and DeepSpeed's loader under a forged file run in the opt-in
# heavy set, which CI runs too. SIGINT and SIGHUP take SIGTERM's path through the launcher and
# torchrun (engines/group.py forwards all three alike; tests/unit/engines/test_group.py).
HEAVY = pytest.mark.heavy


def test_signal_to_launcher_commits_a_checkpoint_and_resume_loses_nothing(tmp_path, signum=signal.SIGTERM):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    whole = tmp_path / "whole"
    assert launch(recipe, whole, nproc=2).returncode == 0

    run_dir = tmp_path / "stopped"
    proc = _start(recipe, run_dir)
    wait_for_step(run_dir, 7, proc=proc)  # past the step-5 checkpoint, before the step-10 one
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, output[-3000:]
    assert _processes_mentioning(str(run_dir)) == []  # no orphans: launcher, torchrun, ranks all gone
    stopped_at = max(r["step"] for r in metrics(run_dir) if "loss" in r)
    assert 7 <= stopped_at < 14
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{stopped_at:08d}"  # the agreed stop step was committed, not step 5
    assert f"stopped by {signal.Signals(signum).name} after step {stopped_at}" in output

    resumed = launch(recipe, run_dir, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = exported_state(whole), exported_state(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise equal to the uninterrupted run
    for rank in (0, 1):
        assert _ids(run_dir, rank) == _ids(whole, rank)  # samples: 0 duplicated, 0 skipped
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == list(range(1, 15))


def test_sigkilled_launcher_leaves_no_orphans_and_the_ranks_still_checkpoint(tmp_path):
    """The launcher itself is SIGKILLed, so none of its cleanup runs: the kernel's parent-death
    signal gives torchrun SIGTERM, the ranks commit one checkpoint at the agreed step, and every
    process of the job is gone."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    run_dir = tmp_path / "killed"
    proc = _start(recipe, run_dir)
    wait_for_step(run_dir, 7, proc=proc)
    proc.kill()
    proc.communicate(timeout=120)  # EOF once torchrun and the ranks, which share the pipe, are gone
    deadline = time.monotonic() + 30
    while _processes_mentioning(str(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(run_dir)) == []
    stopped_at = max(r["step"] for r in metrics(run_dir) if "loss" in r)
    assert 7 <= stopped_at < 14
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stopped_at:08d}"


def test_signals_during_a_save_wait_for_it_and_never_start_a_second_one(tmp_path):
    """docs/faults.md 5: SIGTERM, then SIGINT, reach the job while the step-5 checkpoint is being written
    (each save spends 3 s in state_dict). The save finishes, the ranks stop after that same step
    without saving it again, and the committed checkpoint resumes to the uninterrupted result."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("step_delay: 0.1", "step_delay: 0.02"))
    whole = tmp_path / "whole"
    assert launch(recipe, whole, nproc=2).returncode == 0

    run_dir = tmp_path / "saving"
    proc = _start(recipe, run_dir, "data.save_delay=3")
    marker = run_dir / "saving-rank0"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the first save never started"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # a second signal, still inside the same save
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped by SIGTERM after step 5" in output
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000005"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".commits", "latest", "step-00000005"]
    assert max(r["step"] for r in metrics(run_dir) if "loss" in r) == 5
    assert _processes_mentioning(str(run_dir)) == []

    marker.unlink()
    resumed = launch(recipe, run_dir, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step-00000005" in resumed.stdout
    a, b = exported_state(whole), exported_state(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for rank in (0, 1):
        assert _ids(run_dir, rank) == _ids(whole, rank)


class _Exploit:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("engine, shard", [
    ([], "model.pt"),  # Accelerate, DDP and FSDP alike: torch.load(weights_only=True)
    # DeepSpeed's own loader would unpickle with weights_only=False; every file it reads goes through
    # the one loader of its checkpoint engine that we replace.
    pytest.param(["backend.name=deepspeed", "backend.zero_stage=2"], "deepspeed/mp_rank_00_model_states.pt",
                 marks=HEAVY),
], ids=["accelerate-model", "deepspeed-model"])
def test_malicious_pickle_in_a_checkpoint_never_runs(tmp_path, engine, shard):
    import json

    from launcher.rundir.checkpoints import CHECKSUM, file_digest

    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("step_delay: 0.1", "step_delay: 0.0"))
    run_dir = tmp_path / "run"
    first = launch(recipe, run_dir, *engine, "train.stop_after_steps=5", nproc=1)
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoint = run_dir / "checkpoints" / "step-00000005"
    sentinel = tmp_path / "SENTINEL"
    torch.save({"weight": _Exploit(sentinel)}, checkpoint / shard)  # torch's own format, a pickle inside
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][shard] = {"size": (checkpoint / shard).stat().st_size,  # a "valid" forged shard
                                CHECKSUM: file_digest(checkpoint / shard)}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    (checkpoint.parent / ".commits").unlink()  # a checkpoint from elsewhere: no record of its commit to check
    resumed = launch(recipe, run_dir, *engine, nproc=1)
    assert resumed.returncode != 0  # refused (weights_only loading), not executed
    assert not sentinel.exists()
    assert "Weights only load failed" in _logs(run_dir)


def test_malicious_pickle_as_user_weights_never_runs(tmp_path):
    import pickle

    from launcher.recipes.resnet_transfer import ModelConfig, _starting_point

    sentinel = tmp_path / "SENTINEL"
    weights = tmp_path / "weights.pt"
    weights.write_bytes(pickle.dumps({"conv1.weight": _Exploit(sentinel)}))
    with pytest.raises(pickle.UnpicklingError):
        _starting_point(ModelConfig(weights=str(weights)))
    assert not sentinel.exists()


def _logs(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in run_dir.rglob("*.log"))


FAULT_RECIPE = RECIPE.replace("step_delay: 0.1", "step_delay: 0.0").replace("steps: 14", "steps: 12") \
    .replace("every_steps: 5", "every_steps: 4")


def _attempt_dirs(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "logs" / "torchrun").glob("*/attempt_*")}


def test_sigkilled_rank_restarts_from_checkpoint_bitwise_equal(tmp_path):
    """docs/faults.md 1: rank 1 is SIGKILLed mid-step (step 7); torchrun restarts the group, which resumes
    from the step-4 checkpoint, and the final parameters equal an uninterrupted run's bit for bit."""
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE)
    whole = tmp_path / "whole"
    assert launch(recipe, whole, nproc=2).returncode == 0
    crashed = tmp_path / "crashed"
    result = launch(recipe, crashed, "cluster.max_restarts=1", "data.fault=sigkill", "data.fault_rank=1",
                    "data.fault_after_batches=13", nproc=2)  # 2 micro-batches per step: mid step 7
    assert result.returncode == 0, result.stderr[-3000:]
    assert _attempt_dirs(crashed) == {"attempt_0", "attempt_1"}  # restarts survived: 1
    restarts = [r for r in metrics(crashed) if r.get("event") == "restart"]
    assert restarts == [{"step": 4, "event": "restart", "attempt": 1, "resumed_from_step": 4}]
    assert "restart 1 of cluster.max_restarts=1: resuming at step 4" in result.stderr + result.stdout
    a, b = exported_state(whole), exported_state(crashed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise: no sample lost or counted twice
    assert _processes_mentioning(str(crashed)) == []


def test_a_recipe_edited_under_a_running_job_is_refused_at_the_restart_not_trained(tmp_path):
    """Issue 32: RUN_DIR/recipe.yaml edited while the job runs (lr 0.5) used to be what torchrun's
    restart trained with, while run.json still showed the old values."""
    import yaml

    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    run_dir = tmp_path / "run"
    job = subprocess.Popen(["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(run_dir),
                            "cluster.max_restarts=1", "data.fault=sigkill", "data.fault_rank=1",
                            "data.fault_after_batches=21"], cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # rank 1 killed mid step 11
    wait_for_step(run_dir, 2, proc=job)
    edited = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    edited["optimizer"]["lr"] = 0.5
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(edited))
    output = job.communicate(timeout=300)[0]
    assert job.returncode != 0
    assert f"{run_dir / 'recipe.yaml'} was changed after this job was launched" in output
    summary = output.split("launcher: job failed after 2 attempt(s)")[1]  # the summary names the refusal
    assert "was changed after this job was launched" in summary.split("last lines of")[0]
    assert max(r["step"] for r in train_records(run_dir)) <= 10  # nothing trained after the restart
    assert _attempt_dirs(run_dir) == {"attempt_0", "attempt_1"}


def test_rank_that_always_fails_gets_max_restarts_plus_one_attempts_and_a_summary(tmp_path):
    """docs/faults.md 2: exactly max_restarts+1 attempts, non-zero exit, the first failing host/rank/log named."""
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE)
    run_dir = tmp_path / "failing"
    result = launch(recipe, run_dir, "cluster.max_restarts=2", "data.fault=raise", "data.fault_rank=1",
                    "data.fault_after_batches=3", nproc=2)
    assert result.returncode != 0
    assert _attempt_dirs(run_dir) == {"attempt_0", "attempt_1", "attempt_2"}
    import socket

    summary = result.stderr
    assert "job failed after 3 attempt(s) (cluster.max_restarts=2)" in summary
    assert f"first failure: rank 1 (local rank 1) on host {socket.gethostname()}, attempt 2, exit code 1" in summary
    assert "ValueError: injected failure on rank 1" in summary
    assert "attempt_2/1/stderr.log" in summary and "| " in summary  # the tail of its own log
    recorded = __import__("json").loads((run_dir / "logs" / "failure.json").read_text())
    assert recorded["rank"] == 1 and recorded["attempts"] == 3


def test_stuck_rank_aborts_the_job_within_the_collective_timeout_and_is_named(tmp_path):
    """docs/faults.md 12: rank 1 sleeps inside a step; rank 0's collective times out after 8 s and names it."""
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE)
    started = time.monotonic()
    result = launch(recipe, tmp_path / "stuck", "cluster.collective_timeout=8", "data.fault=hang",
                    "data.fault_rank=1", "data.fault_after_batches=5", nproc=2, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "rank 0: a collective timed out after cluster.collective_timeout=8s; rank(s) 1 never entered it" \
        in result.stderr + result.stdout
    assert elapsed < 8 + 60  # the timeout plus torchrun's stop grace, not forever
    assert _processes_mentioning(str(tmp_path / "stuck")) == []
    # The stall dump (what names the stuck rank on NCCL, whose watchdog kills instead of raising):
    # each rank's log holds its stacks from before the timeout; the stuck rank's show the hang.
    logs = {int(p.parent.name): p.read_text() for p in (tmp_path / "stuck" / "logs" / "torchrun").glob(
        "*/attempt_0/*/stderr.log")}
    assert sorted(logs) == [0, 1]
    assert all("Timeout (0:00:07" in text and "most recent call first" in text for text in logs.values())
    assert "in inject_fault" in logs[1] and "in inject_fault" not in logs[0]
    # ... and the launcher's failure summary says where each rank's step stood.
    summary = result.stderr.split("steps that stalled")[-1]
    assert re.search(r"rank 0: torch/\S+ in \w+ \(from \S+/launcher/\S+ in \w+\)", summary), summary
    assert re.search(r"rank 1: \S+/uneven_recipe.py:\d+ in inject_fault", summary), summary


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_rng_state_is_an_error_not_a_silent_change(tmp_path, damage):
    """docs/faults.md 11: the RNG files are in the manifest; resume refuses a checkpoint without them."""
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE.replace("steps: 12", "steps: 8"))
    run_dir = tmp_path / "run"
    assert launch(recipe, run_dir, "train.stop_after_steps=4", nproc=2).returncode == 0
    rng = run_dir / "checkpoints" / "step-00000004" / "rng-rank00001.pt"
    if damage == "missing":
        rng.unlink()
    else:
        rng.write_bytes(b"\0" * rng.stat().st_size)  # same size: only loading can tell
    result = launch(recipe, run_dir, nproc=2)
    assert result.returncode != 0
    text = result.stderr + result.stdout
    assert "rng-rank00001.pt" in text
    assert not [r for r in metrics(run_dir) if r.get("step", 0) > 4 and "loss" in r]  # nothing trained after


def _per_step_samples(lines_per_rank: list[list[list[int]]], micro_per_step: int) -> list[list[int]]:
    """The sorted sample ids of each optimizer step, across all ranks (what a step trains on)."""
    steps = len(lines_per_rank[0]) // micro_per_step
    return [sorted(i for lines in lines_per_rank for batch in lines[s * micro_per_step:(s + 1) * micro_per_step]
                   for i in batch) for s in range(steps)]


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=HEAVY)])
def test_resume_on_another_world_size_keeps_the_state_data_order_and_lr(tmp_path, strategy):
    """docs/faults.md 10 with full-state checkpoints (Accelerate DDP, FSDP with FULL_STATE_DICT): written
    by 2 processes, resumed by 1. The optimizer state, step count, LR curve and the global sample
    stream carry over."""
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE.replace("dropout: 0.2", "dropout: 0.0"))
    backend = ["backend.name=accelerate", f"backend.strategy={strategy}"]
    whole = tmp_path / "whole"
    assert launch(recipe, whole, *backend, nproc=2).returncode == 0
    moved = tmp_path / "moved"
    first = launch(recipe, moved, *backend, "train.stop_after_steps=4", nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(recipe, moved, *backend, nproc=1)
    assert second.returncode == 0, second.stderr[-3000:]

    warnings = [r["warning"] for r in metrics(moved) if "warning" in r]
    assert warnings == ["resumed a 2-rank checkpoint on 1 rank: the data position, the LR schedule and the "
                        "random streams follow the global step"]
    records = train_records(moved)
    assert [r["step"] for r in records] == list(range(1, 13))  # no step repeated or lost
    reference = {r["step"]: r for r in train_records(whole)}
    for r in records:
        assert r["lr"] == pytest.approx(reference[r["step"]]["lr"], rel=1e-12)
        assert r["loss"] == pytest.approx(reference[r["step"]]["loss"], rel=1e-4)  # only the reduction order differs
    # Steps 5-12 ran on one rank: its 4 micro-batches per step are exactly what two ranks took together.
    whole_steps = _per_step_samples([_ids(whole, 0), _ids(whole, 1)], 2)
    after_resume = _ids(moved, 0)[4 * 2:]  # rank 0 wrote 2 lines per step for steps 1-4
    assert _per_step_samples([after_resume], 4) == whole_steps[4:]
    a, b = exported_state(whole), exported_state(moved)
    assert max_relative_difference(a, b) < 1e-4


# cluster.start_method=fork: the ranks are forked from torchrun's agent (torch already imported).
# The same faults, the same guarantees. Opt-in set (heavy), with the Slurm run in the cluster set.
FORK = "cluster.start_method=fork"
SPAWN = "cluster.start_method=spawn"  # the default on one CPU node is fork (auto): spawn is asked for


@pytest.mark.heavy
def test_forked_ranks_restart_after_a_sigkill_bitwise_equal_to_spawned_ones(tmp_path):
    """docs/faults.md 1 under fork: the agent forks a new group after rank 1 is SIGKILLed; the result equals
    an uninterrupted run with spawned ranks bit for bit, and every rank really was forked."""
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE)
    whole = tmp_path / "whole"
    assert launch(recipe, whole, SPAWN, nproc=2).returncode == 0
    crashed = tmp_path / "crashed"
    result = launch(recipe, crashed, FORK, "cluster.max_restarts=1", "data.fault=sigkill", "data.fault_rank=1",
                    "data.fault_after_batches=13", nproc=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _attempt_dirs(crashed) == {"attempt_0", "attempt_1"}
    a, b = exported_state(whole), exported_state(crashed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for rank in (0, 1):
        assert _ids(crashed, rank)[-8:] == _ids(whole, rank)[-8:]  # the resumed steps saw the same samples
    records = {p.name: json.loads(p.read_text()) for p in (crashed / "logs" / "ranks").glob("*.json")}
    assert len(records) == 2 and all(r["forked"] and r["torch_preloaded"] for r in records.values())
    spawned = [json.loads(p.read_text()) for p in (whole / "logs" / "ranks").glob("*.json")]
    assert not any(r["forked"] or r["torch_preloaded"] for r in spawned)
    # ps/top show a forked rank under the interpreter's name, as a spawned one, not as torchrun's pt_elastic
    assert {r["process_name"] for r in records.values()} == {r["process_name"] for r in spawned} != {"pt_elastic"}
    assert _processes_mentioning(str(crashed)) == []


@pytest.mark.heavy
def test_forked_ranks_stop_on_sigterm_with_a_checkpoint_and_leave_nothing(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    run_dir = tmp_path / "stopped"
    proc = _start(recipe, run_dir, FORK)
    wait_for_step(run_dir, 7, proc=proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    stopped_at = max(r["step"] for r in metrics(run_dir) if "loss" in r)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stopped_at:08d}"
    assert f"stopped by SIGTERM after step {stopped_at}" in output
    assert _processes_mentioning(str(run_dir)) == []


@pytest.mark.heavy
def test_a_forked_rank_that_raises_is_summarised_with_its_traceback_in_its_log(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE)
    run_dir = tmp_path / "failing"
    result = launch(recipe, run_dir, FORK, "data.fault=raise", "data.fault_rank=1", "data.fault_after_batches=3",
                    nproc=2)
    assert result.returncode != 0
    assert "first failure: rank 1 (local rank 1)" in result.stderr and "exit code 1" in result.stderr
    assert "ValueError: injected failure on rank 1" in result.stderr
    (log,) = (run_dir / "logs" / "torchrun").glob("*/attempt_0/1/stderr.log")
    assert "Traceback (most recent call last)" in log.read_text() and "injected failure" in log.read_text()
    assert _processes_mentioning(str(run_dir)) == []


def test_a_full_disk_during_a_save_is_one_clear_failure_and_the_run_resumes_once_there_is_space(tmp_path):
    """Issue 32: a full disk mid-save gave about 100 lines of tracebacks, the launcher died writing
    failure.json and a .tmp-step-* directory stayed. The run directory lives on a 5 MiB tmpfs
    (a user and mount namespace: `unshare`, no root needed) where the second checkpoint cannot fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    run_dir = mount / "run"
    command = ["launcher", "run", "mlp-tiny", "--nproc", "2", "--run-dir", str(run_dir), "model.hidden=512",
               "train.steps=40", "checkpoint.every_steps=10", "scheduler.warmup_steps=1", "train.eval_every=0"]
    script = f"""
mount -t tmpfs -o size=5m tmpfs {mount}
{' '.join(command)} > {tmp_path / 'full.out'} 2>&1; echo $? > {tmp_path / 'full.rc'}
ls -a {run_dir / 'checkpoints'} > {tmp_path / 'left.txt'}
mount -o remount,size=64m {mount}
{' '.join(command)} > {tmp_path / 'again.out'} 2>&1; echo $? > {tmp_path / 'again.rc'}
"""
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                   env=launcher_env(), timeout=600, check=True)
    full = (tmp_path / "full.out").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1"
    assert "checkpoint error: no space left in" in full and "step-00000010 is intact" in full
    assert "Traceback" not in full and "could not record the failure" not in full
    assert len(full.splitlines()) < 40, full  # the step lines, the error, the summary
    assert sorted((tmp_path / "left.txt").read_text().split()) == [".", "..", ".commits", "latest",
                                                                   "step-00000010"]  # no .tmp-step-*
    again = (tmp_path / "again.out").read_text()
    assert (tmp_path / "again.rc").read_text().strip() == "0", again[-3000:]
    assert "resumed from" in again and "at step 10" in again
