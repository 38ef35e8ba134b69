"""Nodes started one by one (--node-rank, or the tasks of `srun launcher run`): each plans its own
torchrun with torchrun's static rendezvous on node 0; never an srun nested inside an srun task."""

from __future__ import annotations

import pytest

from launcher.config.errors import Problem
from launcher.plan.topology import TopologyRequest, resolve_topology


def _problems(request, environ):
    with pytest.raises(ValueError) as raised:
        resolve_topology(request, environ)
    return raised.value.args[0]


def test_a_node_rank_plans_this_node_only_meeting_node_0():
    topology = resolve_topology(TopologyRequest(3, 2, node_rank=2, master_addr="10.0.0.1"), {})
    assert (topology.engine, topology.nodes, topology.world_size, topology.node_rank) == ("node", 3, 6, 2)
    assert topology.hosts[0] == "10.0.0.1" and len(topology.started_here) == 1
    [problem] = _problems(TopologyRequest(2, 2, node_rank=2, master_addr="a"), {})
    assert problem.path == "--node-rank" and "not a node of 2" in problem.message
    [problem] = _problems(TopologyRequest(2, 2, node_rank=1), {})
    assert problem.path == "--master-addr"


SRUN_TASK = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "gpu[3-4]", "SLURM_STEP_ID": "0", "SLURM_NODEID": "1",
             "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "gpu[3-4]"}


def test_srun_launcher_run_is_one_nodes_part_not_a_nested_srun():
    topology = resolve_topology(TopologyRequest(None, 4), SRUN_TASK)
    assert (topology.engine, topology.node_rank, topology.world_size, topology.hosts[0]) == ("node", 1, 8, "gpu3")
    batch_shell = {k: v for k, v in SRUN_TASK.items() if k not in ("SLURM_STEP_ID", "SLURM_NODEID")}
    assert resolve_topology(TopologyRequest(None, 4), batch_shell).engine == "slurm"  # sbatch: srun it is
    [problem] = _problems(TopologyRequest(None, 4), {**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "8"})
    assert isinstance(problem, Problem) and "8 tasks on 2 nodes" in problem.message
    assert "srun --ntasks-per-node=1 launcher run" in problem.hint
