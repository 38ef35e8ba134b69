"""OMP_NUM_THREADS: the node's cores shared among its ranks, unless the user set it."""

import json
import os

from click.testing import CliRunner

from launcher.cli import main
from launcher.engines import threads
from tests.helpers import ROOT
from tests.unit.plan.test_plan import controlled_environment


def test_cores_are_shared_among_the_local_ranks(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert threads.threads_per_rank(4) == 4
    assert threads.threads_per_rank(3) == 5
    assert threads.threads_per_rank(32) == 1  # never 0
    assert threads.with_thread_default({"A": "1"}, 8) == {"A": "1", "OMP_NUM_THREADS": "2"}


def test_a_value_the_user_set_wins():
    assert threads.with_thread_default({"OMP_NUM_THREADS": "7"}, 8)["OMP_NUM_THREADS"] == "7"


def test_the_node_guard_reads_the_ranks_of_its_node_from_torchrun():
    argv = ["python", "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=8", "worker.py"]
    assert threads.nproc_from_torchrun(argv) == 8
    assert threads.nproc_from_torchrun(["python", "x.py"]) == 1


def _local_env(monkeypatch, *overrides: str) -> dict:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["plan", "recipes/mlp-tiny.yaml", "--nproc", "4", "--json", "--run-dir",
                                       "/runs/t", *overrides])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["plan"]["processes"][0]["env"]


def test_a_local_plan_gives_each_rank_its_share_of_the_cores(monkeypatch):
    controlled_environment(monkeypatch)  # 16 cores, no OMP_NUM_THREADS in the shell
    assert _local_env(monkeypatch)["OMP_NUM_THREADS"] == "4"
    assert _local_env(monkeypatch, 'cluster.env.OMP_NUM_THREADS="3"')["OMP_NUM_THREADS"] == "3"
    controlled_environment(monkeypatch, OMP_NUM_THREADS="2")  # the shell's value reaches torchrun as it is
    assert "OMP_NUM_THREADS" not in _local_env(monkeypatch)
