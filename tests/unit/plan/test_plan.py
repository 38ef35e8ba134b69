"""Launch plans as data: batch arithmetic, hostfiles, golden plans."""

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main
from launcher.config.errors import Problem
from launcher.plan.batch import batch_math
from launcher.plan.hostfile import parse_hostfile
from tests.helpers import ROOT

GOLDEN = ROOT / "tests" / "golden"


def test_accumulation_derived_from_world_size():
    one = batch_math(64, 16, (1,), 100, 10, 128)
    many = batch_math(64, 16, (2, 2), 100, 10, 128)
    assert (one.accumulation, many.accumulation) == (4, 1)
    assert one.samples_seen == many.samples_seen == 6400
    assert one.tokens_seen == 6400 * 128


def test_non_divisible_prints_every_factor():
    with pytest.raises(ValueError) as info:
        batch_math(100, 8, (4, 4), 10, 0, None)
    problem: Problem = info.value.args[0]
    assert problem.path == "batch.global"
    assert "8 x (2 nodes x 4 processes) = 64" in problem.message
    assert "100 / 64 = 1.5625" in problem.message
    assert "multiple of 64" in problem.hint


def test_hostfile_parsing_and_errors():
    hosts, problems = parse_hostfile("# c\n\nnode-1 slots=4\nnode-2 slots=4  # x\n", "hf")
    assert [(h.name, h.slots) for h in hosts] == [("node-1", 4), ("node-2", 4)] and not problems
    bad = "node-1 slots=4\nnode-1 slots=4\n-oProxyCommand=touch_x slots=1\nnode-3 slots=zero\na;b slots=1\n"
    hosts, problems = parse_hostfile(bad, "hf")
    messages = [p.message for p in problems]
    assert any("duplicate host node-1" in m for m in messages)
    assert any("-oProxyCommand" in m for m in messages)
    assert any("slots=zero" in m for m in messages)
    assert any("a;b" in m for m in messages)
    assert [p.where for p in problems] == ["hf:2", "hf:3", "hf:4", "hf:5"]


def _plan_text(args: list[str]) -> str:
    result = CliRunner().invoke(main, ["plan", *args, "--run-dir", "/runs/golden"])
    assert result.exit_code == 0, result.output
    return result.output.replace(sys.executable, "{python}").replace(str(ROOT), "{repo}")


def controlled_environment(monkeypatch, **extra: str) -> None:
    """Plans forward variables from the launching shell: pin them so golden files are stable."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    base = {"PATH": "/opt/venv/bin:/usr/bin", "NCCL_DEBUG": "WARN", "HOME": "/root", "SSH_AUTH_SOCK": "/tmp/agent",
            "WANDB_API_KEY": "wandb_secret_value", "MY_SETTING": "x"}
    for name, value in {**base, **extra}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("launcher.plan.topology.shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr("launcher.engines.threads.os.sched_getaffinity", lambda _pid: set(range(16)))  # 16 cores


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[01-02,07],cpu5", "SLURM_JOB_NUM_NODES": "4"}
HOSTFILE = ["--hostfile", "hostfiles/example-4node.txt", "batch.global=256", "batch.micro=8"]


@pytest.mark.parametrize("name,args,env", [
    ("plan-2proc", ["recipes/mlp-tiny.yaml", "--nproc", "2"], {}),
    ("plan-4node", ["recipes/mlp-tiny.yaml", *HOSTFILE, "cluster.env.NCCL_DEBUG=WARN",
                    "cluster.env.HF_TOKEN=hf_secret_value", "cluster.remote_shell=ssh"], {}),
    ("plan-4node-pdsh", ["recipes/mlp-tiny.yaml", *HOSTFILE, "cluster.forward_env=[MY_SETTING]"], {}),
    ("plan-pdsh-include", ["recipes/mlp-tiny.yaml", "--hostfile", "hostfiles/example-4node.txt",
                           "--include", "gpu-node-01:0,1,2,3@gpu-node-02:4,5,6,7", "batch.global=64",
                           "batch.micro=8"], {}),
    ("plan-pdsh-uneven", ["recipes/mlp-tiny.yaml", "--hostfile", "hostfiles/example-4node.txt",
                          "--exclude", "gpu-node-02:6,7", "batch.global=240", "batch.micro=8"], {}),
    ("plan-slurm", ["recipes/mlp-tiny.yaml", "--nproc", "8", "batch.global=256", "batch.micro=8"], SLURM),
    ("plan-slurm-fork", ["recipes/mlp-tiny.yaml", "--nproc", "8", "batch.global=256", "batch.micro=8",
                         "cluster.start_method=fork"], SLURM),
])
def test_golden_plans(name, args, env, monkeypatch):
    monkeypatch.chdir(ROOT)
    update = os.environ.get("UPDATE_GOLDEN")
    controlled_environment(monkeypatch, **env)
    text = _plan_text(args)
    golden = GOLDEN / f"{name}.txt"
    if update:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), f"regenerate with UPDATE_GOLDEN=1 after checking {name}"
    for secret in ("hf_secret_value", "wandb_secret_value"):
        assert secret not in text
    assert "SSH_AUTH_SOCK" not in text and "HOME=" not in text  # the allowlist keeps the shell's junk home


def test_four_node_plan_json(monkeypatch):
    monkeypatch.chdir(ROOT)
    controlled_environment(monkeypatch)
    result = CliRunner().invoke(main, ["plan", "recipes/mlp-tiny.yaml", *HOSTFILE, "cluster.remote_shell=ssh",
                                       "--json", "--run-dir", "/runs/golden"])
    import json

    plan = json.loads(result.output)["plan"]
    assert plan["engine"] == "ssh" and plan["math"]["world_size"] == 32 and plan["math"]["accumulation"] == 1
    assert [n["host"] for n in plan["nodes"]] == ["gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-04"]
    port = int(plan["rendezvous"].rsplit(":", 1)[1])  # the default 29500 becomes a port of this run's own
    assert 20000 <= port < 30000 and port != 29500
    assert all(f"--rdzv-endpoint=gpu-node-01:{port}" in n["argv"] for n in plan["nodes"])
    assert all(p["argv"][7:9] == ["--", h] for p, h in zip(plan["processes"], [n["host"] for n in plan["nodes"]],
                                                           strict=True))
    assert plan["secret_names"] == ["WANDB_API_KEY"]
    assert "wandb_secret_value" not in result.output


def test_forked_workers_are_named_by_the_installed_file():
    import launcher.runtime.worker
    from launcher.plan.launch import worker_entry

    assert worker_entry("spawn") == ["-m", "launcher.runtime.worker"]
    flags, path = worker_entry("fork")[:2], worker_entry("fork")[2]
    assert flags == ["--run-path", "--start-method=fork"]
    assert Path(path).is_absolute() and Path(path).samefile(launcher.runtime.worker.__file__)
