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

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"


def test_accumulation_derived_from_world_size():
    one = batch_math(64, 16, 1, 1, 1, 100, 10, 128)
    many = batch_math(64, 16, 4, 2, 2, 100, 10, 128)
    assert (one.accumulation, many.accumulation) == (4, 1)
    assert one.samples_seen == many.samples_seen == 6400
    assert one.tokens_seen == 6400 * 128


def test_non_divisible_prints_every_factor():
    with pytest.raises(ValueError) as info:
        batch_math(100, 8, 8, 2, 4, 10, 0, None)
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
    return result.output.replace(sys.executable, "{python}")


@pytest.mark.parametrize("name,args", [
    ("plan-2proc", ["recipes/mlp-tiny.yaml", "--nproc", "2"]),
    ("plan-4node", ["recipes/mlp-tiny.yaml", "--hostfile", "hostfiles/example-4node.txt", "batch.global=256",
                    "batch.micro=8", "cluster.env.NCCL_DEBUG=WARN", "cluster.env.HF_TOKEN=hf_secret_value"]),
])
def test_golden_plans(name, args, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = _plan_text(args)
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), f"regenerate with UPDATE_GOLDEN=1 after checking {name}"
    assert "hf_secret_value" not in text


def test_four_node_plan_json(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["plan", "recipes/mlp-tiny.yaml", "--hostfile",
                                       "hostfiles/example-4node.txt", "batch.global=256", "batch.micro=8",
                                       "--json", "--run-dir", "/runs/golden"])
    import json

    plan = json.loads(result.output)["plan"]
    assert plan["engine"] == "ssh" and plan["math"]["world_size"] == 32 and plan["math"]["accumulation"] == 1
    assert [n["host"] for n in plan["nodes"]] == ["gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-04"]
    assert all("--rdzv-endpoint=gpu-node-01:29500" in n["argv"] for n in plan["nodes"])
    assert all(n["via"][-2:] == ["--", n["host"]] for n in plan["nodes"])
