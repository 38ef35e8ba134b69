"""Slurm from a login node: sbatch scripts (golden), sweeps, submit, job ids, requeue decisions, secrets."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main
from launcher.slurm.jobs import parse_slurm_duration
from launcher.slurm.preemption import decide
from launcher.slurm.sbatch import (
    SbatchRequest,
    SlurmOptions,
    check_options,
    check_run_dir,
    render_sbatch,
    sweep_tasks,
)
from tests.helpers import ROOT

GOLDEN = ROOT / "tests" / "golden"


def _options(**changes) -> SlurmOptions:
    base = dict(nodes=4, nproc_per_node=8, gpus_per_node=8, cpus_per_task=64, time="2-00:00:00", partition="gpu",
                account="ml-team")
    return SlurmOptions(**{**base, **changes})


def _request(overrides=("optimizer.lr=1e-4", "tracking.mode=online"), **changes) -> SbatchRequest:
    return SbatchRequest(job_name="bert-base", recipe_path="/work/recipes/bert-base-pretrain.yaml",
                         run_dir="/scratch/runs/bert-base", workdir="/work", python="/venv/bin/python",
                         options=_options(**changes), overrides=overrides)


@pytest.mark.parametrize("name,request_", [
    ("sbatch-4node.sh", _request()),
    ("sbatch-array.sh", _request(nodes=1, sweeps=("optimizer.lr=1e-4,3e-4", "batch.micro=16,32"),
                                 extra=("--qos=high",), requeue=False)),
])
def test_golden_sbatch(name, request_):
    text = render_sbatch(request_)
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), f"regenerate with UPDATE_GOLDEN=1 after checking {name}"
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0  # valid bash syntax


def test_sweep_product_and_array_lines():
    assert sweep_tasks(("a=1,2", "b=x,y")) == [("a=1", "b=x"), ("a=1", "b=y"), ("a=2", "b=x"), ("a=2", "b=y")]
    text = render_sbatch(_request(sweeps=("a=1,2",)))
    assert "#SBATCH --array=0-1" in text and "/task-1 --nodes 4 --nproc 8 -- optimizer.lr=1e-4" in text


@pytest.mark.parametrize("changes,flag", [
    ({"partition": "gpu\n#SBATCH --uid=0"}, "--partition"),
    ({"account": "a b"}, "--account"),
    ({"time": "2 days"}, "--time"),
    ({"extra": ("--qos=high; rm -rf /",)}, "--sbatch"),
    ({"sweeps": ("lr",)}, "--sweep"),
])
def test_sbatch_refuses_values_that_cannot_be_quoted(changes, flag):
    problems = check_options(_options(**changes))
    assert [p.path for p in problems] == [flag]
    assert [p.path for p in check_run_dir("/runs/my run")] == ["--run-dir"]
    assert check_run_dir("/runs/my-run") == []


def test_sbatch_exec_line_quotes_hostile_overrides(tmp_path):
    sentinel = tmp_path / "sentinel"
    text = render_sbatch(_request(overrides=(f"name=$(touch {sentinel})", "x=`id`")))
    exec_line = [line for line in text.splitlines() if line.startswith("exec ")][0]
    assert shlex.split(exec_line)[-2:] == [f"name=$(touch {sentinel})", "x=`id`"]


def test_submit_dry_run_validates_the_recipe_for_the_allocation():
    ok = CliRunner().invoke(main, ["submit", str(ROOT / "recipes/mlp-tiny.yaml"), "--nodes", "2", "--dry-run",
                                   "--time", "10", "--run-dir", "/runs/x"])
    assert ok.exit_code == 0, ok.output
    assert "#SBATCH --nodes=2" in ok.output and "#SBATCH --signal=B:USR1@120" in ok.output
    # 2 nodes x 3 processes x micro 8 does not divide the global batch of 64: refused before queueing.
    bad = CliRunner().invoke(main, ["submit", str(ROOT / "recipes/mlp-tiny.yaml"), "--nodes", "2", "--nproc", "3",
                                    "--dry-run"])
    assert bad.exit_code == 2 and "batch.global" in bad.output


@pytest.mark.parametrize("text,seconds", [("1-02:03:04", 93784), ("02:03:04", 7384), ("03:04", 184), ("5", 300),
                                          ("UNLIMITED", None), ("", None)])
def test_slurm_durations(text, seconds):
    assert parse_slurm_duration(text) == seconds


def test_timeout_told_apart_from_preemption_with_a_budget():
    assert decide(3600, 120, {}, 3).cause == "preemption"
    assert decide(None, 120, {"timeout": 99}, 3).requeue  # unlimited time: never a timeout
    first = decide(100, 120, {}, 2)
    assert (first.cause, first.requeue) == ("timeout", True)
    spent = decide(100, 120, {"timeout": 2, "preemption": 5}, 2)
    assert (spent.cause, spent.requeue) == ("timeout", False) and "timeout_requeues=2" in spent.message


def test_a_sweep_task_directory_means_that_array_task(tmp_path, monkeypatch):
    """`launcher cancel|status|logs RUN_DIR/task-1` acts on array task 12_1 only, not the array."""
    import json

    from launcher.slurm import jobs

    calls = []

    def fake_run(argv, timeout=60):  # the subprocess seam: no Slurm here
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1 if argv[0] == "scontrol" else 0, "", "")

    monkeypatch.setattr(jobs, "_run", fake_run)
    run_dir = tmp_path / "sweep"
    (run_dir / "slurm").mkdir(parents=True)
    (run_dir / "slurm" / "jobs.json").write_text(json.dumps([{"job_id": "12", "array_tasks": 2}]))
    for name in ("12_0.out", "12_1.out", "123.out"):  # 123: another job, whose id starts with 12
        (run_dir / "slurm" / name).write_text(name)
    (run_dir / "task-1").mkdir()

    assert jobs.resolve_job(str(run_dir)) == ("12", run_dir)
    assert jobs.resolve_job(str(run_dir / "task-1")) == ("12_1", run_dir / "task-1")
    (run_dir / "task-2").mkdir()
    with pytest.raises(jobs.SlurmError, match="no job was submitted"):
        jobs.resolve_job(str(run_dir / "task-2"))  # the array has tasks 0 and 1
    with pytest.raises(jobs.SlurmError, match="task-3: no such directory, not a run directory or a Slurm job id"):
        jobs.resolve_job(str(run_dir / "task-3"))
    assert [p.name for p in jobs.log_files("12_1", run_dir / "task-1")] == ["12_1.out"]
    assert [p.name for p in jobs.log_files("12", run_dir)] == ["12_0.out", "12_1.out"]

    result = CliRunner().invoke(main, ["cancel", str(run_dir / "task-1")])
    assert result.exit_code == 0 and "cancelled job 12_1" in result.output
    assert calls[-1] == ["scancel", "12_1"]


SECRET = "hf_secret_token_0123456789"


def _fake_sbatch(tmp_path: Path, monkeypatch, exit_code: int = 0) -> Path:
    """The subprocess seam: an `sbatch` that records its argv and environment."""
    record = tmp_path / "sbatch-call.json"
    script = tmp_path / "bin" / "sbatch"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      f"json.dump({{'argv': sys.argv, 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n"
                      f"print('4242'); sys.exit({exit_code})\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.parametrize("override", [f"cluster.env.HF_TOKEN={SECRET}", f"cluster.env={{HF_TOKEN: {SECRET}, A: b}}",
                                      f"cluster={{env: {{HF_TOKEN: {SECRET}}}}}"])
def test_submit_never_writes_a_secret_override_and_the_job_still_gets_it(tmp_path, monkeypatch, override):
    import json

    record = _fake_sbatch(tmp_path, monkeypatch)
    args = ["submit", str(ROOT / "recipes/mlp-tiny.yaml"), "--nodes", "1", "--run-dir", str(tmp_path / "run"),
            override]
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0 and SECRET not in dry.output, dry.output
    assert "# Secrets reach the job in the environment `launcher submit` gave sbatch" in dry.output
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    script = tmp_path / "run" / "slurm" / "job.sbatch"
    leaked = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert script.exists() and leaked == [] and SECRET not in result.output
    call = json.loads(record.read_text())
    assert call["env"]["HF_TOKEN"] == SECRET  # sbatch exports its environment to the job
    if "A: b" in override:
        assert "cluster.env={A: b}" in script.read_text()  # the rest of the mapping stays an override


def test_a_failed_submit_leaves_no_secret_behind(tmp_path, monkeypatch):
    _fake_sbatch(tmp_path, monkeypatch, exit_code=1)
    result = CliRunner().invoke(main, ["submit", str(ROOT / "recipes/mlp-tiny.yaml"), "--run-dir",
                                       str(tmp_path / "run"), f"cluster.env.HF_TOKEN={SECRET}"])
    assert result.exit_code == 1
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_a_secret_cannot_be_swept():
    problems = check_options(_options(sweeps=("cluster.env.HF_TOKEN=a,b",)))
    assert [p.path for p in problems] == ["--sweep"] and "secret" in problems[0].message


def test_the_jobs_own_run_gets_the_memory_size_and_the_override_that_submit_got():
    text = render_sbatch(_request(device_memory="40GiB", memory_check=False))
    command = text.strip().splitlines()[-1]
    assert "--device-memory 40GiB --no-memory-check --" in command
    assert "--no-memory-check" not in render_sbatch(_request())
