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


def test_an_engine_that_ran_no_rank_is_a_failure_not_a_success(tmp_path):
    """Issue 32: with --no-preflight, a remote shell that runs nothing and exits 0 gave "job finished
    with exit status 0". Success is rank 0's record of the job's end (a fake `ssh` on PATH: the
    subprocess seam)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text("#!/bin/sh\nexit 0\n")
    (fake / "ssh").chmod(0o755)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    env = launcher_env()
    env["PATH"] = f"{fake}:{env['PATH']}"
    result = subprocess.run(["launcher", "run", "mlp-tiny", "--hostfile", str(hostfile), "--no-preflight",
                             "cluster.remote_shell=ssh", "--run-dir", str(tmp_path / "run")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "the engine exited 0, but no rank of the job ever started" in result.stderr
    assert "job finished with exit status 1" in result.stderr and "Traceback" not in result.stderr


def test_a_second_job_on_the_same_explicit_port_is_refused_naming_it_and_the_first_goes_on(tmp_path):
    """Issue 32: two jobs on one explicit port joined one rendezvous; the first to end killed the
    other, whose report never named the port. The port is used as given, and checked at every start
    (--no-preflight too)."""
    import socket

    with socket.socket() as probe:  # a port free now
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    recipe = write_recipe(tmp_path / "r.yaml", f"""\
recipe: {ROOT / "tests" / "fixtures" / "uneven_recipe.py"}
data: {{samples: 96, step_delay: 0.05}}
batch: {{global: 16, micro: 4}}
train: {{steps: 30, log_every: 1}}
cluster: {{master_port: {port}}}
""")
    first = subprocess.Popen(["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(tmp_path / "first")],
                             cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from tests.helpers import wait_for_step

    wait_for_step(tmp_path / "first", 1, proc=first)
    second = launch(recipe, tmp_path / "second", "--no-preflight", nproc=2, timeout=120)
    assert second.returncode == 2
    assert f"the rendezvous port localhost:{port} is in use" in second.stderr and "Traceback" not in second.stderr
    assert first.wait(timeout=300) == 0, first.stdout.read()[-3000:]
    assert [r["step"] for r in train_records(tmp_path / "first")][-1] == 30


def test_a_network_interface_this_machine_lacks_is_refused_before_start(tmp_path):
    """Issue 32: the ranks crashed in gloo after start; the summary said "crash outside Python"."""
    result = launch(ROOT / "recipes" / "mlp-tiny.yaml", tmp_path / "run", "cluster.network_interface=ib7",
                    "--no-preflight", nproc=2, timeout=60)
    assert result.returncode == 2
    assert "no network interface ib7 (cluster.network_interface); this host has" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_cancel_stops_a_local_run_with_a_checkpoint_and_says_when_none_runs(tmp_path):
    """Hostile pass: `launcher cancel RUN_DIR` of a `launcher run` run said "no job was submitted";
    it now stops it as Ctrl-C would (the ranks commit a checkpoint)."""
    from tests.helpers import wait_for_step

    recipe = write_recipe(tmp_path / "r.yaml", f"""\
recipe: {ROOT / "tests" / "fixtures" / "uneven_recipe.py"}
data: {{samples: 96, step_delay: 0.05}}
batch: {{global: 16, micro: 4}}
train: {{steps: 200, log_every: 1}}
""")
    run_dir = tmp_path / "run"
    job = subprocess.Popen(["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(run_dir)], cwd=ROOT,
                           env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, 2, proc=job)
    cancel = subprocess.run(["launcher", "cancel", str(run_dir)], cwd=ROOT, env=launcher_env(), capture_output=True,
                            text=True, timeout=60)
    assert cancel.returncode == 0 and "stopping the run in" in cancel.stderr, cancel.stderr
    assert job.wait(timeout=120) == 143
    stopped = max(r["step"] for r in train_records(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stopped:08d}"
    again = subprocess.run(["launcher", "cancel", str(run_dir)], cwd=ROOT, env=launcher_env(), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "no launcher is running this run" in again.stderr
