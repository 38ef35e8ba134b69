"""The network a multi-node job runs on: the rendezvous address and the interfaces NCCL and gloo use."""

import json

from click.testing import CliRunner

from launcher.cli import main
from tests.helpers import ROOT
from tests.unit.plan.test_plan import HOSTFILE, controlled_environment


def _plan(monkeypatch, *args: str):
    monkeypatch.chdir(ROOT)
    controlled_environment(monkeypatch)
    return CliRunner().invoke(main, ["plan", "recipes/mlp-tiny.yaml", *HOSTFILE, "batch.global=512", "--json",
                                     "--run-dir", "/runs/net", *args])


def test_master_addr_replaces_the_first_host_in_every_nodes_rendezvous(monkeypatch):
    default = json.loads(_plan(monkeypatch).output)["plan"]
    assert default["rendezvous"].startswith("c10d://gpu-node-01:")
    for args in (["--master-addr", "10.1.0.11"], ["cluster.master_addr=10.1.0.11"]):
        plan = json.loads(_plan(monkeypatch, *args).output)["plan"]
        port = plan["rendezvous"].rsplit(":", 1)[1]
        assert plan["rendezvous"] == f"c10d://10.1.0.11:{port}"
        assert all(f"--rdzv-endpoint=10.1.0.11:{port}" in node["argv"] for node in plan["nodes"])
        assert [n["host"] for n in plan["nodes"]][0] == "gpu-node-01"  # the node list itself is unchanged


def test_network_interface_reaches_nccl_and_gloo_on_every_node(monkeypatch):
    plan = json.loads(_plan(monkeypatch, "cluster.network_interface=ib0").output)["plan"]
    for node in plan["nodes"]:
        assert node["env"]["NCCL_SOCKET_IFNAME"] == "ib0" and node["env"]["GLOO_SOCKET_IFNAME"] == "ib0"
    excluded = json.loads(_plan(monkeypatch, "cluster.network_interface=^docker0,lo").output)["plan"]
    assert excluded["nodes"][0]["env"]["NCCL_SOCKET_IFNAME"] == "^docker0,lo"
    assert "GLOO_SOCKET_IFNAME" not in excluded["nodes"][0]["env"]  # gloo has no exclusion syntax


def test_bad_addresses_and_interfaces_are_named(monkeypatch):
    result = _plan(monkeypatch, "--master-addr", "a;rm -rf x", "cluster.network_interface=eth0 eth1")
    assert result.exit_code == 2
    assert "`cluster.master_addr`: `a;rm -rf x` is not a host name or IP address" in result.output
    assert "`cluster.network_interface`: `eth0 eth1` is not a list of interface names" in result.output


def test_a_slurm_port_held_by_another_job_on_the_first_node_moves_to_the_next_free_one(monkeypatch):
    """Jobs 10000 apart derive the same port (15000 + the id's last 4 digits); on the node that
    hosts the store the launcher takes the next free one, and every node is told that one."""
    import socket

    here = socket.gethostname().split(".")[0]
    port = 15000 + 4242
    held = socket.socket()
    held.bind(("", port))  # another job's rendezvous store
    held.listen()
    job_id = str(10000 + port - 15000)  # ends in the digits that derive `port`
    monkeypatch.chdir(ROOT)
    controlled_environment(monkeypatch, SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST=f"{here},othernode",
                           SLURM_JOB_NUM_NODES="2")
    try:
        result = CliRunner().invoke(main, ["plan", "recipes/mlp-tiny.yaml", "--nproc", "2", "--json",
                                           "--run-dir", "/runs/slurm"])
    finally:
        held.close()
    plan = json.loads(result.output)["plan"]
    chosen = int(plan["rendezvous"].rsplit(":", 1)[1])
    assert chosen != port and port < chosen <= port + 64
    assert all(f"--rdzv-endpoint={here}:{chosen}" in " ".join(p["argv"]) for p in plan["processes"])
