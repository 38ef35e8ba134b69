"""Multi-node planning as pure functions: hostlists, hostfile filters, env allowlist, quoting,
sbatch scripts (golden), requeue decisions."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main
from launcher.engines.commands import NodeCommand
from launcher.engines.remote import remote_command
from launcher.engines.remote_env import forwarded_env
from launcher.plan.hostfile import apply_filters, parse_hostfile
from launcher.plan.hostlist import expand_hostlist
from launcher.slurm.jobs import parse_slurm_duration
from launcher.slurm.preemption import decide
from launcher.slurm.sbatch import SbatchRequest, check_request, render_sbatch, sweep_tasks

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"


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


def test_env_allowlist_splits_secrets():
    environ = {"PATH": "/v/bin", "NCCL_IB_HCA": "mlx5", "HOME": "/root", "SSH_AUTH_SOCK": "/s", "RANK": "3",
               "WANDB_API_KEY": "k", "HF_TOKEN": "t", "MY_VAR": "1", "PYTHONPATH": "/p"}
    plain, secrets = forwarded_env(environ, ["MY_VAR"])
    assert plain == {"MY_VAR": "1", "NCCL_IB_HCA": "mlx5", "PATH": "/v/bin", "PYTHONPATH": "/p"}
    assert secrets == {"HF_TOKEN": "t", "WANDB_API_KEY": "k"}


HOSTILE_VALUES = ["$(touch {s})", "`touch {s}`", "'; touch {s}; '", "\"; touch {s}; \"", "a\ntouch {s}",
                  "$HOME;touch {s}", "x' \"y\" $(touch {s})"]


def test_hostile_env_values_and_paths_never_execute(tmp_path):
    """docs/faults.md 15: the remote command string is run by a real shell; nothing in it may execute."""
    sentinel = tmp_path / "sentinel"
    odd_dir = tmp_path / "dir with 'quotes' and\nnewline"
    odd_dir.mkdir()
    env = {f"V{i}": value.format(s=sentinel) for i, value in enumerate(HOSTILE_VALUES)}
    printer = [sys.executable, "-c", "import os, json; print(json.dumps({k: os.environ[k] for k in os.environ "
               "if k.startswith('V')}))", "$(touch " + str(sentinel) + ")"]
    command = remote_command(NodeCommand("h", tuple(printer), env), str(odd_dir))
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    import json

    assert json.loads(done.stdout) == env  # every value arrived byte for byte
    assert not sentinel.exists()


def test_hostile_hostnames_are_refused_before_any_command():
    text = "-oProxyCommand=touch_x slots=1\na;b slots=1\nname with space slots=1\n$(x) slots=1\n"
    hosts, problems = parse_hostfile(text, "hf")
    assert not hosts and len(problems) == 4


def _request(**changes) -> SbatchRequest:
    base = dict(job_name="bert-base", recipe_path="/work/recipes/bert-base-pretrain.yaml",
                run_dir="/scratch/runs/bert-base", workdir="/work", python="/venv/bin/python", nodes=4,
                nproc_per_node=8, gpus_per_node=8, cpus_per_task=64, time="2-00:00:00", partition="gpu",
                account="ml-team", overrides=("optimizer.lr=1e-4", "tracking.mode=online"))
    base.update(changes)
    return SbatchRequest(**base)


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
    ({"run_dir": "/runs/my run"}, "--run-dir"),
    ({"extra": ("--qos=high; rm -rf /",)}, "--sbatch"),
    ({"sweeps": ("lr",)}, "--sweep"),
])
def test_sbatch_refuses_values_that_cannot_be_quoted(changes, flag):
    problems = check_request(_request(**changes))
    assert [p.path for p in problems] == [flag]


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


def test_first_failing_node_is_named_and_the_ones_still_starting_are_listed():
    """docs/faults.md 13 at the launcher's seam: node 0 fails (e.g. rendezvous timeout) while node 1 is
    still connecting; the report sees both, and node 1's process is stopped, not left behind."""
    from launcher.engines.group import Command, run_group

    seen = []
    started = time.monotonic()
    status = run_group([Command(["sh", "-c", "sleep 0.3; exit 3"], dict(os.environ)),
                        Command(["sleep", "30"], dict(os.environ))],
                       grace=2, on_failure=lambda first, view: seen.append((first, view.codes())))
    assert status == 3 and seen == [(0, [3, None])]
    assert time.monotonic() - started < 10  # the sleeping node was stopped, not waited for


def test_pdsh_per_host_exits_are_read_from_its_stderr_and_passed_through(capfd):
    from launcher.engines.group import Command, run_group

    script = ("echo 'host1: torch...RendezvousTimeoutError' >&2; "
              "echo 'pdsh@login: host2: ssh exited with exit code 255' >&2; "
              "echo 'pdsh@login: host1: ssh exited with exit code 1' >&2; exit 255")
    seen = []

    def report(first, view):
        view.codes()  # as the real report does: this waits for an exited pdsh's stderr
        seen.append(dict(view.host_exits[first]))

    status = run_group([Command(["sh", "-c", script], dict(os.environ), pdsh_host_exits=True),
                        Command(["sleep", "30"], dict(os.environ))], grace=2, on_failure=report)
    # Complete when the report runs: the view waits for an exited process's stderr to be read.
    assert status == 255 and seen == [{"host2": 255, "host1": 1}]
    assert "ssh exited with exit code 255" in capfd.readouterr().err  # the user still sees pdsh's lines


def _hostfile_plan(engine: str, hosts: list[str], tmp_path):
    from launcher.engines.commands import LocalProcess
    from launcher.plan.launch import LaunchPlan

    if engine == "ssh":
        processes = tuple(LocalProcess(("ssh", h), (h,), {}, True) for h in hosts)
    else:
        processes = (LocalProcess(("pdsh",), tuple(hosts), {}, True),)
    return LaunchPlan(str(tmp_path), engine, (), processes, 1, "c10d://host1:29500", None)


def test_unjoined_hosts_from_ssh_exits_pdsh_lines_and_processes_still_starting(tmp_path):
    from launcher.engines.node_report import unjoined_hosts

    ssh = _hostfile_plan("ssh", ["host1", "host2", "host3", "host4"], tmp_path)
    # host1 and host2 joined and timed out (exit 1), host3 never connected, host4 is still connecting.
    missing = unjoined_hosts(ssh, [1, 1, 255, None], [{}, {}, {}, {}])
    assert list(missing) == ["host3", "host4"] and "255" in missing["host3"] and "starting" in missing["host4"]
    pdsh = _hostfile_plan("pdsh", ["host1", "host2", "host3"], tmp_path)
    assert list(unjoined_hosts(pdsh, [255], [{"host1": 1, "host2": 255}])) == ["host2"]
    assert list(unjoined_hosts(pdsh, [None], [{"host1": 1}])) == ["host2", "host3"]


def test_rendezvous_timeout_is_read_from_the_agents_error_files(tmp_path):
    from launcher.engines.node_report import rendezvous_timed_out
    from launcher.rundir import RunDir

    errors = RunDir(tmp_path).agent_errors

    assert not rendezvous_timed_out(str(tmp_path))
    errors.mkdir(parents=True)
    (errors / "node1-7.error.json").write_text('{"message": {"message": "ValueError"}}')
    assert not rendezvous_timed_out(str(tmp_path))
    (errors / "node2-9.error.json").write_text(
        '{"message": {"message": "RendezvousTimeoutError: "}}')
    assert rendezvous_timed_out(str(tmp_path))


def test_secret_names_are_whole_words_not_prefixes():
    from launcher.secrets import is_secret_name, redact_env

    for name in ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "GH_APIKEY", "wandb_api_key",
                 "MY_ACCESS_TOKENS"):
        assert is_secret_name(name), name
    for name in ("TOKENIZERS_PARALLELISM", "KEYBOARD_LAYOUT", "PATH", "NCCL_IB_HCA", "OMP_NUM_THREADS"):
        assert not is_secret_name(name), name
    assert redact_env({"HF_TOKEN": "hf_x", "TOKENIZERS_PARALLELISM": "false"}) == {
        "HF_TOKEN": "<redacted>", "TOKENIZERS_PARALLELISM": "false"}


def test_slurm_jobs_get_their_own_rendezvous_port_unless_one_is_configured():
    from launcher.plan.launch import rendezvous_port

    assert rendezvous_port(29500, "4242") == 19242 and rendezvous_port(29500, "1234567") == 19567
    assert rendezvous_port(29500, "4242") != rendezvous_port(29500, "4243")  # two jobs on one node
    assert rendezvous_port(29600, "4242") == 29600  # a port the recipe chose is kept
    assert rendezvous_port(29500, "") == 29500  # hostfile and local runs: as configured


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
    with pytest.raises(jobs.SlurmError, match="no job was submitted"):
        jobs.resolve_job(str(run_dir / "task-2"))  # the array has tasks 0 and 1
    assert [p.name for p in jobs.log_files("12_1", run_dir / "task-1")] == ["12_1.out"]
    assert [p.name for p in jobs.log_files("12", run_dir)] == ["12_0.out", "12_1.out"]

    result = CliRunner().invoke(main, ["cancel", str(run_dir / "task-1")])
    assert result.exit_code == 0 and "cancelled job 12_1" in result.output
    assert calls[-1] == ["scancel", "12_1"]


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
    problems = check_request(_request(sweeps=("cluster.env.HF_TOKEN=a,b",)))
    assert [p.path for p in problems] == ["--sweep"] and "secret" in problems[0].message
