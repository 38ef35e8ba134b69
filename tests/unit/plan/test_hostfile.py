"""Hostfiles and hostlists: parsing, filters, hostile names, the rendezvous port of a hostfile job."""


import pytest
from click.testing import CliRunner

from launcher.cli import main
from launcher.plan.hostfile import apply_filters, parse_hostfile
from launcher.plan.hostlist import expand_hostlist
from tests.helpers import ROOT


@pytest.mark.parametrize("expression,hosts", [
    ("gpu[01-03,07],cpu5", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]),
    ("node1", ["node1"]),
    ("a[8-10]", ["a8", "a9", "a10"]),
    ("a[08-10]", ["a08", "a09", "a10"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("x-1.dc,y[3]", ["x-1.dc", "y3"]),
])
def test_hostlist_expansion(expression, hosts):
    assert expand_hostlist(expression) == hosts


@pytest.mark.parametrize("bad", ["gpu[01-03", "gpu01-03]", "gpu[3-1]", "gpu[a-b]", "a,,b"])
def test_hostlist_errors(bad):
    with pytest.raises(ValueError):
        expand_hostlist(bad)


HOSTS = parse_hostfile("w1 slots=4\nw2 slots=4\nw3 slots=4\n", "hf")[0]


def test_include_exclude_filters():
    kept, problems = apply_filters(HOSTS, "w1:0,1@w3:2,3", "", "hf")
    assert not problems and [(h.name, h.used) for h in kept] == [("w1", (0, 1)), ("w3", (2, 3))]
    kept, problems = apply_filters(HOSTS, "", "w2", "hf")
    assert not problems and [h.name for h in kept] == ["w1", "w3"] and kept[0].slot_ids is None
    kept, problems = apply_filters(HOSTS, "", "w1:3", "hf")
    assert kept[0].used == (0, 1, 2) and kept[1].used == (0, 1, 2, 3)


@pytest.mark.parametrize("include,exclude,fragment", [
    ("w9", "", "unknown host `w9`"),
    ("w1:7", "", "out of range"),
    ("w1:x", "", "bad slot list"),
    ("w1", "w2", "both filters"),
    ("", "w1@w2@w3", "leaves no hosts"),
])
def test_filter_errors(include, exclude, fragment):
    _, problems = apply_filters(HOSTS, include, exclude, "hf")
    assert problems and fragment in problems[0].message


def test_filters_through_the_cli_exit_2(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("w1 slots=2\nw2 slots=2\n")
    result = CliRunner().invoke(main, ["plan", str(ROOT / "recipes/mlp-tiny.yaml"), "--hostfile", str(hostfile),
                                       "--include", "w1@nosuch"])
    assert result.exit_code == 2 and "unknown host `nosuch`" in result.output


def test_hostile_hostnames_are_refused_before_any_command():
    text = "-oProxyCommand=touch_x slots=1\na;b slots=1\nname with space slots=1\n$(x) slots=1\n"
    hosts, problems = parse_hostfile(text, "hf")
    assert not hosts and len(problems) == 4


def test_slurm_jobs_get_their_own_rendezvous_port_unless_one_is_configured():
    from launcher.plan.launch import rendezvous_port

    assert rendezvous_port(None, "4242") == 19242 and rendezvous_port(None, "1234567") == 19567
    assert rendezvous_port(None, "4242") != rendezvous_port(None, "4243")  # two jobs on one node
    assert rendezvous_port(29600, "4242") == 29600  # a port the recipe chose is kept
    assert rendezvous_port(29500, "4242") == 29500  # ... the default's number too, when the recipe sets it


def test_hostfile_names_a_byte_order_mark_instead_of_an_invisible_bad_name():
    hosts, problems = parse_hostfile("\ufeffw1 slots=2\nw2 slots=2\n", "hf")
    assert [h.name for h in hosts] == ["w1", "w2"]
    assert len(problems) == 1 and "byte-order mark" in problems[0].message and problems[0].where == "hf:1"
    _, problems = parse_hostfile("w1\u200b slots=2\n", "hf")  # other invisible characters are shown escaped
    assert "'w1\\u200b'" in problems[0].message


@pytest.mark.parametrize("text", ["W1 slots=2\nw1 slots=2\n", "w1. slots=2\nw1 slots=2\n", "w1 slots=2\nW1. slots=2\n"])
def test_hostfile_host_names_ignore_case_and_a_trailing_dot(text):
    hosts, problems = parse_hostfile(text, "hf")
    assert len(hosts) == 1 and len(problems) == 1 and "duplicate host" in problems[0].message


def test_hostfile_refuses_a_field_given_twice():
    hosts, problems = parse_hostfile("w1 slots=2 slots=4\n", "hf")
    assert not hosts and "2 fields" in problems[0].message


def test_hostfile_filters_match_names_as_the_hostfile_does():
    hosts, _ = parse_hostfile("Worker-0 slots=4\nworker-1 slots=4\n", "hf")
    kept, problems = apply_filters(hosts, "worker-0:0,1@WORKER-1.", "", "hf")
    assert not problems and [(h.name, h.slot_ids) for h in kept] == [("Worker-0", (0, 1)), ("worker-1", None)]


def test_a_hostfile_that_is_a_device_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["plan", str(ROOT / "recipes/mlp-tiny.yaml"), "--hostfile", "/dev/zero"])
    assert result.exit_code == 2 and "hostfile is not a regular file" in result.output


def test_two_hostfile_runs_on_one_machine_get_their_own_rendezvous_ports(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    ports = set()
    for run in ("a", "b", "c"):
        result = CliRunner().invoke(main, ["plan", str(ROOT / "recipes/mlp-tiny.yaml"), "--hostfile", str(hostfile),
                                           "--json", "--run-dir", str(tmp_path / run), "cluster.remote_shell=ssh"])
        assert result.exit_code == 0, result.output
        import json

        rendezvous = json.loads(result.output)["plan"]["rendezvous"]
        ports.add(int(rendezvous.rsplit(":", 1)[1]))
    assert len(ports) == 3 and all(20000 <= p < 30000 for p in ports)
    chosen = CliRunner().invoke(main, ["plan", str(ROOT / "recipes/mlp-tiny.yaml"), "--hostfile", str(hostfile),
                                       "--run-dir", str(tmp_path / "a"), "cluster.master_port=31000"])
    assert "rendezvous c10d://localhost:31000" in chosen.output  # a port the recipe sets is kept
    default = CliRunner().invoke(main, ["plan", str(ROOT / "recipes/mlp-tiny.yaml"), "--hostfile", str(hostfile),
                                        "--run-dir", str(tmp_path / "a"), "cluster.master_port=29500"])
    assert "rendezvous c10d://localhost:29500" in default.output  # even the default's number, when it is set


@pytest.mark.parametrize("hostfile,include,exclude,procs,devices", [
    # DeepSpeed's launcher tests' cases that leave hosts uneven: one failing GPU left out, say.
    ("worker-0 slots=4\nworker-1 slots=4\n", "", "worker-0:0,1@worker-1:3", (2, 3), ((2, 3), (0, 1, 2))),
    ("worker-0 slots=4\nworker-1 slots=4\n", "worker-0@worker-1:0,2", "", (4, 2), (None, (0, 2))),
    ("worker-0 slots=8\nworker-1 slots=4\n", "", "", (8, 4), (None, None)),
])
def test_uneven_hosts_plan_their_own_process_counts(tmp_path, hostfile, include, exclude, procs, devices):
    from launcher.plan.topology import TopologyRequest, resolve_topology

    path = tmp_path / "hosts"
    path.write_text(hostfile)
    topology = resolve_topology(TopologyRequest(None, 1, str(path), include, exclude, "ssh"),
                                which=lambda name: f"/usr/bin/{name}")
    assert topology.procs_by_node == procs and topology.slot_ids == devices
    assert topology.world_size == sum(procs)


def test_an_uneven_plan_starts_each_node_with_its_own_count_and_divides_the_batch_by_the_sum(tmp_path):
    import json

    hostfile = tmp_path / "hosts"
    hostfile.write_text("worker-0 slots=4\nworker-1 slots=4\n")
    args = ["plan", str(ROOT / "recipes/mlp-tiny.yaml"), "--hostfile", str(hostfile), "--exclude",
            "worker-0:0,1@worker-1:3", "cluster.remote_shell=ssh", "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(main, [*args, "batch.global=40", "batch.micro=4", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["plan"]
    assert plan["procs_by_node"] == [2, 3] and plan["math"]["world_size"] == 5 and plan["math"]["accumulation"] == 2
    nprocs = [[a for a in n["argv"] if a.startswith("--nproc-per-node=")] for n in plan["nodes"]]
    assert nprocs == [["--nproc-per-node=2"], ["--nproc-per-node=3"]]
    assert [n["env"]["CUDA_VISIBLE_DEVICES"] for n in plan["nodes"]] == ["2,3", "0,1,2"]
    refused = CliRunner().invoke(main, [*args, "batch.global=64", "batch.micro=4"])
    assert refused.exit_code == 2 and "4 x (2 nodes with 2+3 processes) = 20" in refused.output


def test_the_fast_line_path_parses_as_the_careful_one():
    """Plain `name [slots=N]` lines take one regex match; every other line the careful path. Both
    must agree on what they accept, and the careful path must still name every problem."""
    text = ("a slots=2\n  b\t\tslots=3  \nc\nd slots=02\n# comment\n\ne slots=2 # trailing comment\n"
            "f slots=0\n-g slots=1\nA slots=4\nh slots=x\ni\u00a0slots=2\nj. slots=1\n")
    hosts, problems = parse_hostfile(text, "hf")
    assert [(h.name, h.slots) for h in hosts] == [("a", 2), ("b", 3), ("c", 1), ("d", 2), ("e", 2),
                                                  ("i", 2), ("j.", 1)]
    assert [(p.where, p.message.split(" ")[0]) for p in problems] == [
        ("hf:8", "bad"), ("hf:9", "'-g'"), ("hf:10", "duplicate"), ("hf:11", "bad")]


def test_a_ten_thousand_node_plan_json_is_what_json_would_write(tmp_path):
    """Large plans are written by splicing each distinct argv and environment in once; the text must
    parse to exactly the plan, keys in order, secrets redacted."""
    import json

    from launcher.rundir.record import plan_json

    nodes = [{"host": f"n{i:05d}", "argv": ["python", "-m", "x", f"--rank-hint={i % 3}"],
              "env": {"PATH": "/bin", "HF_TOKEN": "<redacted>", "CUDA_VISIBLE_DEVICES": str(i % 2), "Q": 'a"\\\n'}}
             for i in range(10_000)]
    data = {"recipe": {"name": "x", "nodes": [], "weird": "\u0000nodes"},
            "plan": {"run_dir": "/r", "engine": "pdsh", "nodes": nodes, "processes": [], "math": {"g": 1}}}
    text = plan_json(data)
    assert json.loads(text) == data and list(json.loads(text)["plan"]) == list(data["plan"])
    assert text == json.dumps(data) + "\n"  # byte for byte what the C encoder writes
    nodes[7]["host"] = 'we"ird\u00e9'  # a name that needs escaping takes the encoder for every host
    assert plan_json(data) == json.dumps(data) + "\n"
