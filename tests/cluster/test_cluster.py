"""Real multi-node runs: Slurm (sbatch -> srun -> torchrun per node) and hostfiles over pdsh/ssh,
each node a network namespace with its own IP, hostname, slurmd and sshd."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from launcher.rundir import RunDir
from tests.helpers import FIXTURES, ROOT, launch, launcher_env, metrics, train_records, wait_for_step, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

RECIPE = f"""\
recipe: {FIXTURES / "uneven_recipe.py"}
model: {{hidden: 64, dropout: 0.1}}
data: {{samples: 96, step_delay: 0.0}}
optimizer: {{lr: 1e-1}}
batch: {{global: 16, micro: 4}}
train: {{steps: 24, log_every: 1}}
checkpoint: {{every_steps: 4}}
cluster: {{rdzv_timeout: 60}}
"""


def _learned(losses: list[float]) -> bool:
    return sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4  # measured: 1.61 -> 0.88


def _ranks(run_dir: Path) -> dict[int, dict]:
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (run_dir / "logs" / "ranks").glob("*.json")}


def _ids(run_dir: Path, rank: int) -> list[str]:
    return (run_dir / f"ids-rank{rank}.txt").read_text().splitlines()


def _submit(cluster, recipe: Path, run_dir: Path, *extra: str, nodes: int = 2) -> str:
    done = subprocess.run(["launcher", "submit", str(recipe), "--nodes", str(nodes), "--nproc", "1", "--time", "10",
                           "--run-dir", str(run_dir), *extra], cwd=ROOT, env=cluster.env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert job_id.isdigit() and json.loads(RunDir(run_dir).jobs.read_text())[-1]["job_id"] == job_id
    return job_id


def _wait_job(cluster, job_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not cluster.slurm("squeue", "-h", "-j", job_id, check=False).strip():
            break
        time.sleep(1)
    else:
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")
    state = cluster.slurm("scontrol", "show", "job", "--oneliner", job_id)
    return state.split("JobState=")[1].split()[0]


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_submit_runs_across_two_slurm_nodes(cluster, tmp_path, start_method):
    """fork: each node's torchrun agent forks its rank, node 1's while it hosts the rendezvous store."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    run_dir = tmp_path / "slurm-run"
    job_id = _submit(cluster, recipe, run_dir, f"cluster.start_method={start_method}")
    state = _wait_job(cluster, job_id)
    log = "".join(p.read_text() for p in (run_dir / "slurm").glob("*.out"))
    assert state == "COMPLETED", log[-3000:]
    ranks = _ranks(run_dir)
    assert {ranks[0]["host"], ranks[1]["host"]} == {"node1", "node2"}  # one rank on each Slurm node
    assert all(r["forked"] == (start_method == "fork") for r in ranks.values())
    losses = [r["loss"] for r in train_records(run_dir)]
    assert len(losses) == 24 and _learned(losses)
    # The same job as a local 2-process run: identical data order and (up to float noise) losses.
    local = tmp_path / "local"
    assert launch(recipe, local, nproc=2).returncode == 0
    assert _ids(run_dir, 0) == _ids(local, 0) and _ids(run_dir, 1) == _ids(local, 1)
    assert losses == pytest.approx([r["loss"] for r in train_records(local)], rel=1e-5)
    status = subprocess.run(["launcher", "status", str(run_dir)], env=cluster.env(), capture_output=True, text=True)
    assert f"job {job_id}: JobState=COMPLETED" in status.stdout and "last step 24" in status.stdout
    logs = subprocess.run(["launcher", "logs", str(run_dir)], env=cluster.env(), capture_output=True, text=True)
    assert "step 24/24" in logs.stdout and "engine" not in logs.stderr


def test_preemption_signal_checkpoints_and_requeues_once(cluster, tmp_path):
    """docs/faults.md 4: USR1 to the batch shell -> ranks agree on a step, one checkpoint, `scontrol requeue`."""
    # 80 steps of 0.15 s leave ~11 s after step 6 for the signal to travel launcher -> srun -> node
    # guards -> torchrun -> ranks on a loaded CI machine; with 30 steps CI once finished first.
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("step_delay: 0.0", "step_delay: 0.15")
                          .replace("steps: 24", "steps: 80"))
    run_dir = tmp_path / "preempted"
    job_id = _submit(cluster, recipe, run_dir)
    wait_for_step(run_dir, 6, timeout=120)
    cluster.slurm("scancel", "--signal=USR1", "--batch", job_id)
    state = _wait_job(cluster, job_id, timeout=400)
    log = "".join(p.read_text() for p in (run_dir / "slurm").glob("*.out"))
    assert state == "COMPLETED", log[-4000:]
    assert "preempted: requeueing" in log and f"job {job_id} requeued" in log
    assert json.loads((run_dir / "slurm" / "requeues.json").read_text()) == {"preemption": 1}
    restarts = cluster.slurm("scontrol", "show", "job", "--oneliner", job_id).split("Restarts=")[1].split()[0]
    assert restarts == "1"  # requeued exactly once
    # Nothing lost or repeated: the data order equals an uninterrupted local run's.
    local = tmp_path / "local"
    assert launch(recipe, local, nproc=2).returncode == 0
    assert _ids(run_dir, 0) == _ids(local, 0) and _ids(run_dir, 1) == _ids(local, 1)


def test_time_limit_signal_is_a_timeout_and_spends_the_budget(cluster, tmp_path):
    """docs/faults.md 4, the other half: Slurm's own USR1 shortly before the time limit. The time left
    tells it from a preemption; with cluster.timeout_requeues=0 the budget is spent, so the ranks
    commit one checkpoint and the job ends before Slurm would kill it, without a requeue."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("step_delay: 0.0", "step_delay: 0.2")
                          .replace("steps: 24", "steps: 2000").replace("rdzv_timeout: 60", "rdzv_timeout: 60, "
                                                                       "timeout_requeues: 0"))
    run_dir = tmp_path / "timed-out"
    done = subprocess.run(["launcher", "submit", str(recipe), "--nodes", "2", "--nproc", "1", "--time", "2",
                           "--signal-lead", "60", "--run-dir", str(run_dir)], cwd=ROOT, env=cluster.env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    state = _wait_job(cluster, job_id, timeout=300)
    log = "".join(p.read_text() for p in (run_dir / "slurm").glob("*.out"))
    assert "time limit reached; not requeued: 0 timeout requeue(s) used of cluster.timeout_requeues=0" in log, \
        log[-4000:]
    job = cluster.slurm("scontrol", "show", "job", "--oneliner", job_id)
    assert state != "TIMEOUT" and "Restarts=0" in job  # it stopped itself in time and was not requeued
    assert not (run_dir / "slurm" / "requeues.json").exists()
    stopped_at = max(r["step"] for r in train_records(run_dir))
    assert 0 < stopped_at < 2000
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stopped_at:08d}"


def test_cancelled_job_commits_a_checkpoint_and_a_resubmission_resumes_it_exactly(cluster, tmp_path):
    """`launcher cancel RUN_DIR`: scancel's SIGTERM reaches every rank, which agree on a step and
    commit one checkpoint before Slurm's KillWait; submitting the same run dir again resumes there
    and the data order equals an uninterrupted run's (nothing lost, nothing seen twice)."""
    # No periodic checkpoint: one at the stop step can only come from the SIGTERM.
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("step_delay: 0.0", "step_delay: 0.15")
                          .replace("steps: 24", "steps: 80").replace("every_steps: 4", "every_steps: 0"))
    run_dir = tmp_path / "cancelled"
    job_id = _submit(cluster, recipe, run_dir)
    wait_for_step(run_dir, 6, timeout=120)
    done = subprocess.run(["launcher", "cancel", str(run_dir)], env=cluster.env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and f"cancelled job {job_id}" in done.stderr, done.stderr
    assert _wait_job(cluster, job_id) == "CANCELLED"
    stopped_at = max(r["step"] for r in train_records(run_dir))
    assert 6 <= stopped_at < 80
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stopped_at:08d}"
    assert not (run_dir / "slurm" / "requeues.json").exists()  # a cancel is not a preemption
    assert subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True).stdout == b""

    again = _submit(cluster, recipe, run_dir)
    assert again != job_id and _wait_job(cluster, again) == "COMPLETED"
    assert [r["step"] for r in train_records(run_dir)] == list(range(1, 81))  # each step logged once
    local = tmp_path / "local"
    assert launch(recipe, local, nproc=2).returncode == 0
    assert _ids(run_dir, 0) == _ids(local, 0) and _ids(run_dir, 1) == _ids(local, 1)


def test_a_zero2_job_of_two_slurm_nodes_continues_on_one(cluster, tmp_path):
    """docs/faults.md 22 on Slurm: a ZeRO-2 job on 2 nodes stops with its checkpoint; the same recipe
    submitted with --nodes 1 continues it (the shards joined once, each rank taking its part), and
    from there every step equals an uninterrupted 1-node run's, on the same samples."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("dropout: 0.1", "dropout: 0.0"))
    zero2 = ["backend.name=deepspeed", "backend.zero_stage=2"]
    run_dir = tmp_path / "run"
    first = _submit(cluster, recipe, run_dir, *zero2, "train.stop_after_steps=8")
    assert _wait_job(cluster, first) == "COMPLETED"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    second = _submit(cluster, recipe, run_dir, *zero2, nodes=1)
    assert _wait_job(cluster, second) == "COMPLETED"
    log = "".join(p.read_text() for p in (run_dir / "slurm").glob("*.out"))
    assert "resumes the 2-rank ZeRO-2 checkpoint of step 8 on 1 rank (resharded)" in log, log[-3000:]
    warnings = [r["warning"] for r in metrics(run_dir) if "warning" in r]
    assert warnings == ["resumed a 2-rank checkpoint on 1 rank (resharded): the data position, the LR schedule "
                        "and the random streams follow the global step"], (warnings, log[-2000:])
    local = tmp_path / "local"
    assert launch(recipe, local, *zero2, nproc=1).returncode == 0
    reference = {r["step"]: r for r in train_records(local)}
    records = train_records(run_dir)
    assert [r["step"] for r in records] == list(range(1, 25))
    for record in records[8:]:
        assert record["loss"] == pytest.approx(reference[record["step"]]["loss"], rel=1e-5)
    # The ledger: rank 0 wrote 2 micro-batches per step on 2 nodes (16 = 4 x 2 x 2), then 4 alone.
    assert _ids(run_dir, 0)[8 * 2:] == _ids(local, 0)[8 * 4:]


def test_sweep_runs_one_array_task_per_value_and_a_task_dir_cancels_only_its_task(cluster, tmp_path):
    """`launcher submit --sweep`: a Slurm job array; task i trains with the i-th value into
    RUN_DIR/task-i. `launcher cancel RUN_DIR/task-1` stops that task only (with a checkpoint at its
    stop step) while task 0 trains to the end; `launcher status` reports the task or the array."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("step_delay: 0.0", "step_delay: 0.1")
                          .replace("steps: 24", "steps: 100"))
    run_dir = tmp_path / "sweep"
    done = subprocess.run(["launcher", "submit", str(recipe), "--nodes", "1", "--nproc", "2", "--time", "10",
                           "--sweep", "optimizer.lr=0.1,0.02", "--run-dir", str(run_dir)], cwd=ROOT,
                          env=cluster.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    array_id = done.stdout.strip()
    script = (run_dir / "slurm" / "job.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script
    wait_for_step(run_dir / "task-1", 4, timeout=120)
    cancelled = subprocess.run(["launcher", "cancel", str(run_dir / "task-1")], env=cluster.env(),
                               capture_output=True, text=True, timeout=60)
    assert cancelled.returncode == 0 and f"cancelled job {array_id}_1" in cancelled.stderr, cancelled.stderr
    _wait_job(cluster, array_id)
    tasks = cluster.slurm("scontrol", "show", "job", "--oneliner", array_id)
    learned = {}
    for index, lr in enumerate((0.1, 0.02)):
        task_dir = run_dir / f"task-{index}"
        assert yaml.safe_load((task_dir / "recipe.yaml").read_text())["optimizer"]["lr"] == lr
        learned[lr] = [r["loss"] for r in train_records(task_dir)]
    assert len(learned[0.1]) == 100, tasks  # task 0 was not touched
    assert (run_dir / "task-0" / "checkpoints" / "latest").read_text().strip() == "step-00000100"
    stopped_at = len(learned[0.02])
    assert 4 <= stopped_at < 100, tasks
    assert (run_dir / "task-1" / "checkpoints" / "latest").read_text().strip() == f"step-{stopped_at:08d}"
    assert learned[0.1][:4] != learned[0.02][:4]  # each task got its own value
    assert (run_dir / "slurm" / f"{array_id}_0.out").exists() and (run_dir / "slurm" / f"{array_id}_1.out").exists()

    def status(target: Path) -> str:
        done = subprocess.run(["launcher", "status", str(target)], env=cluster.env(), capture_output=True, text=True)
        return done.stdout + done.stderr

    assert f"job {array_id}_1: JobState=CANCELLED" in status(run_dir / "task-1")
    assert f"job {array_id}_0: JobState=COMPLETED" in status(run_dir / "task-0")
    assert f"job {array_id}: JobState=CANCELLED,COMPLETED" in status(run_dir)


def _hostfile_run(cluster, recipe: Path, run_dir: Path, hostfile: Path, *overrides: str,
                  **popen) -> subprocess.Popen:
    argv = ["launcher", "run", str(recipe), "--hostfile", str(hostfile), "--run-dir", str(run_dir), *overrides]
    return subprocess.Popen(argv, cwd=ROOT, env=cluster.env(WANDB_API_KEY="wandb-secret-4242"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_hostfile_deepspeed_zero2_over_pdsh(cluster, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    run_dir = tmp_path / "ds-hostfile"
    proc = _hostfile_run(cluster, recipe, run_dir, cluster.hostfile(tmp_path / "hosts"),
                         "backend.name=deepspeed", "backend.zero_stage=2")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["engine"] == "pdsh" and plan["math"]["world_size"] == 2
    ranks = _ranks(run_dir)
    assert {ranks[0]["host"], ranks[1]["host"]} == {"node1", "node2"}
    losses = [r["loss"] for r in train_records(run_dir)]
    assert len(losses) == 24 and _learned(losses)
    local = tmp_path / "local"
    assert launch(recipe, local, "backend.name=deepspeed", "backend.zero_stage=2", nproc=2).returncode == 0
    assert losses == pytest.approx([r["loss"] for r in train_records(local)], rel=1e-5)
    # The secret reached no file and the secrets file is gone.
    assert not (run_dir / ".secrets.json").exists()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert b"wandb-secret-4242" not in path.read_bytes(), path


@pytest.mark.parametrize("shell", ["pdsh", "ssh"])
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_stopped_hostfile_launcher_leaves_no_process_on_any_node(cluster, tmp_path, shell, kill):
    """docs/faults.md 3 across nodes: the ranks commit one checkpoint, then nothing of the job is left.
    A SIGKILLed launcher runs no cleanup: pdsh gets its parent-death SIGTERM and dies, ssh's stdin
    closes with the launcher; either way each node's guard reads EOF and stops its torchrun."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("step_delay: 0.0", "step_delay: 0.2")
                          .replace("steps: 24", "steps: 200"))
    run_dir = tmp_path / f"{'kill' if kill else 'term'}-{shell}"
    proc = _hostfile_run(cluster, recipe, run_dir, cluster.hostfile(tmp_path / "hosts"),
                         f"cluster.remote_shell={shell}")
    wait_for_step(run_dir, 3, timeout=120, proc=proc)
    proc.kill() if kill else proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert kill or proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    # The namespaces share this machine's process table: one look sees every node.
    deadline = time.monotonic() + (60 if kill else 1)
    while True:
        leftovers = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout.split()
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert leftovers == [], subprocess.run(["ps", "-fp", ",".join(leftovers)], capture_output=True, text=True).stdout
    stopped_at = max(r["step"] for r in train_records(run_dir))
    assert stopped_at < 200
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{stopped_at:08d}"


def test_unreachable_host_fails_preflight_naming_it(cluster, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("host1 slots=1\nnode9 slots=1\n")  # node9: no such namespace
    proc = _hostfile_run(cluster, recipe, tmp_path / "never", hostfile)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "node9" in output and "pre-flight" in output
    assert not (tmp_path / "never").exists()


def test_a_network_interface_a_node_lacks_fails_preflight_naming_each_host_and_what_it_has(cluster, tmp_path):
    """Issue 32: a cluster.network_interface that does not exist crashed the ranks in gloo after start
    ("crash outside Python"). Every host is asked before anything starts."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    proc = _hostfile_run(cluster, recipe, tmp_path / "never", cluster.hostfile(tmp_path / "hosts"),
                         "cluster.network_interface=ib7")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, output[-3000:]
    lines = [line.strip() for line in output.splitlines() if "no network interface ib7" in line]
    assert sorted(line.split(":")[0] for line in lines) == ["host1", "host2"], output
    assert all("this host has" in line and "lo" in line for line in lines)
    assert not (tmp_path / "never").exists()


def test_preflight_names_a_node_whose_route_to_the_rendezvous_host_is_cut(cluster, tmp_path):
    """host2 still answers ssh from the launcher, but has no route to host1, the rendezvous host:
    without the check, host1 would wait out the join timeout for a node that can never arrive."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    route = ["ip", "-n", "lc2", "route", "add", "unreachable", f"{cluster.subnet}.1/32"]
    subprocess.run(route, check=True)
    try:
        proc = _hostfile_run(cluster, recipe, tmp_path / "never", cluster.hostfile(tmp_path / "hosts"))
        output, _ = proc.communicate(timeout=120)
    finally:
        subprocess.run([*route[:4], "del", *route[5:]], check=True)
    assert proc.returncode == 2, output[-3000:]
    problem = next(line for line in output.splitlines() if "cannot reach the rendezvous" in line)
    assert problem.lstrip().startswith("host2:") and f"{cluster.subnet}.1" in problem, output
    assert "host1: cannot reach" not in output and not (tmp_path / "never").exists()


def test_hostfile_hosts_with_uneven_slot_counts_run_two_plus_one_processes(cluster, tmp_path):
    """One host keeps 2 slots, the other 1 (as when a failing GPU is left out): each torchrun
    starts its own count, the world is 3, and the losses are a local 3-process run's."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("global: 16, micro: 4", "global: 12, micro: 4"))
    hostfile = tmp_path / "hosts"
    hostfile.write_text("host1 slots=2\nhost2 slots=2\n")
    run_dir = tmp_path / "uneven"
    proc = _hostfile_run(cluster, recipe, run_dir, hostfile, "--exclude", "host2:1", "cluster.remote_shell=ssh")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    assert "2 nodes with 2+1 processes" in output
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["procs_by_node"] == [2, 1] and plan["math"]["world_size"] == 3
    ranks = _ranks(run_dir)
    assert sorted(ranks[r]["host"] for r in range(3)) == ["node1", "node1", "node2"], ranks
    losses = [r["loss"] for r in train_records(run_dir)]
    assert len(losses) == 24 and _learned(losses)
    local = tmp_path / "local"
    assert launch(recipe, local, nproc=3).returncode == 0
    assert losses == pytest.approx([r["loss"] for r in train_records(local)], rel=1e-5)


def _wandb_records(run: Path) -> list[dict]:
    done = subprocess.run(["wandb", "leet", "inspect", "--json", str(run)], capture_output=True, text=True,
                          timeout=120, check=True, env=launcher_env())
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_two_nodes_name_the_slow_rank_and_its_host_and_both_machines_land_in_the_one_wandb_run(cluster, tmp_path):
    """Issue 24 across nodes: rank 1 (on node2) sleeps in its data path; the straggler line names it
    and node2, and the alert is recorded. With tracking.system_metrics=all_nodes, node2 writes its
    machine's metrics into the same (offline) W&B run, labelled node2; the same run without the
    sleep names no straggler."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("steps: 24, log_every: 1", "steps: 20, log_every: 4")
                          .replace("every_steps: 4", "every_steps: 0"))
    tracking = ["tracking.mode=offline", "tracking.system_metrics=all_nodes", "cluster.remote_shell=ssh"]
    runs = {}
    for name, slow in (("slow", ["data.slow_rank=1", "data.slow_data_s=0.05"]), ("even", [])):
        run_dir = tmp_path / name
        proc = _hostfile_run(cluster, recipe, run_dir, cluster.hostfile(tmp_path / "hosts"), *tracking, *slow)
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-4000:]
        runs[name] = (run_dir, output)
    run_dir, output = runs["slow"]
    assert _ranks(run_dir)[1]["host"] == "node2"
    (line,) = [line for line in output.splitlines() if "straggler:" in line]
    assert re.search(r"straggler: rank 1 on node2 is \d+% slower than the median rank for 3 log intervals; "
                     r"its data is slow", line), line
    alerts = [r["alert"] for r in metrics(run_dir) if "alert" in r]
    assert [a["kind"] for a in alerts] == ["straggler", "completion"], alerts
    assert "straggler" not in runs["even"][1]
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    (primary,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    (node2,) = (run_dir / "wandb-nodes" / "node2" / "wandb").glob(f"offline-run-*-{run_id}")
    assert not (run_dir / "wandb-nodes" / "node1").exists()  # rank 0's node is the primary writer
    for writer, label in ((primary, "node1"), (node2, "node2")):
        records = _wandb_records(writer)
        stats = [key for r in records if r["type"] == "stats" for key in r["stats"]["item"]]
        assert stats and all(key.endswith(f"/l:{label}") for key in stats), (label, stats[:5])
    node2_records = _wandb_records(node2)
    assert not [r for r in node2_records if r["type"] == "history"]  # training metrics: rank 0's alone
    primary_records = _wandb_records(primary)
    assert any(r["type"] == "alert" for r in primary_records)
    # The per-rank timings reached W&B's history too, with the slow rank's host.
    history = [r["history"]["item"] for r in primary_records if r["type"] == "history"]
    timed = [h for h in history if "data_s_max" in h]
    assert timed and all(h["slowest_rank"] == 1 and h["slowest_host"] == "node2" for h in timed), timed[:2]


@pytest.mark.parametrize("shell", ["ssh", "pdsh"])
def test_node_that_never_arrives_fails_the_job_after_the_join_timeout_naming_it(cluster, tmp_path, shell):
    """docs/faults.md 13: host2 hangs (its sshd is SIGSTOPped after pre-flight would have passed), so its
    node never joins. host1's torchrun gives up after the join timeout and the launcher names host2."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("rdzv_timeout: 60", "rdzv_timeout: 15"))
    run_dir = tmp_path / f"lonely-{shell}"
    sshd = int((cluster.base / "ssh" / "sshd-2.pid").read_text())
    os.kill(sshd, signal.SIGSTOP)
    try:
        started = time.monotonic()
        proc = _hostfile_run(cluster, recipe, run_dir, cluster.hostfile(tmp_path / "hosts"), "--no-preflight",
                             f"cluster.remote_shell={shell}")
        output, _ = proc.communicate(timeout=180)
        elapsed = time.monotonic() - started
    finally:
        os.kill(sshd, signal.SIGCONT)
    assert proc.returncode not in (0, 2), output[-3000:]
    assert 15 <= elapsed < 45, output[-3000:]  # after the join timeout, not hanging on the dead node
    verdict = next(line for line in output.splitlines() if "the rendezvous timed out after 15 s" in line)
    never_joined = verdict.split("nodes that never joined: ")[1]
    assert never_joined.startswith("host2 (") and "host1" not in never_joined
    assert not list((run_dir / "checkpoints").glob("step-*"))  # nothing trained, nothing half-written
    time.sleep(1)
    assert subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True).stdout == b""


def test_nodes_started_one_by_one_with_node_rank_train_as_the_pdsh_started_job(cluster, tmp_path):
    """Something else starts each node (pods, a VM group): `launcher run --nodes 2 --node-rank R
    --master-addr node1` on each machine, node 1's first (it waits for node 0's run directory)."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    by_hand = tmp_path / "by-hand"
    command = ["launcher", "run", str(recipe), "--nodes", "2", "--nproc", "1", "--master-addr", "node1",
               "--run-dir", str(by_hand)]
    second = cluster.on(2, [*command, "--node-rank", "1"], cwd=ROOT)
    time.sleep(2)
    first = cluster.on(1, [*command, "--node-rank", "0"], cwd=ROOT)
    outputs = {rank: proc.communicate(timeout=600)[0] for rank, proc in ((0, first), (1, second))}
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert "node 1 of 2" in outputs[1] and "static://node1:" in outputs[1]
    ranks = _ranks(by_hand)
    assert (ranks[0]["host"], ranks[1]["host"]) == ("node1", "node2")  # the ranks follow the node ranks given
    pdsh = tmp_path / "pdsh"
    proc = _hostfile_run(cluster, recipe, pdsh, cluster.hostfile(tmp_path / "hosts"), "cluster.remote_shell=pdsh")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert [r["loss"] for r in train_records(by_hand)] == \
        pytest.approx([r["loss"] for r in train_records(pdsh)], rel=1e-5)


def test_srun_launcher_run_runs_each_task_as_its_nodes_part(cluster, tmp_path):
    """accelerate's multi-node Slurm habit, `srun launcher run ...` in a batch script: each task is one
    node's part (never an srun nested in each task); more than one task per node is refused."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    run_dir = tmp_path / "srun"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\ncd {ROOT}\nsrun --ntasks-per-node=1 launcher run {recipe} --nproc 1 "
                      f"--run-dir {run_dir}\n")
    job_id = cluster.slurm("sbatch", "--parsable", "--nodes=2", f"--output={tmp_path}/slurm-%j.out",
                           str(script)).strip()
    state = _wait_job(cluster, job_id)
    log = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert state == "COMPLETED", log[-3000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["engine"] == "node" and plan["procs_by_node"] == [1, 1] and plan["node_rank"] == 0
    assert {r["host"] for r in _ranks(run_dir).values()} == {"node1", "node2"}
    assert _learned([r["loss"] for r in train_records(run_dir)])
    refused = subprocess.run(["srun", "--nodes=1", "--ntasks=2", "launcher", "plan", str(recipe)], cwd=ROOT,
                             env=cluster.env(), capture_output=True, text=True, timeout=120)
    assert "this step runs 2 tasks on 1 nodes" in refused.stdout + refused.stderr


# docs/faults.md 24 across nodes: the four hangs of tests/integration/test_hangs.py with rank 1 on the
# second node, over pdsh and on Slurm. The launcher reads the heartbeats on the shared run directory;
# each node's torchrun agent reads its own processes.
def _hang_verdict(output: str, fault: str, run_dir: Path, host: str) -> None:
    from tests.integration.test_hangs import check_timing, check_verdict, waited

    verdict = check_verdict(output, fault, run_dir, host)
    stuck_for, deadline = waited(verdict)
    assert deadline <= stuck_for <= deadline + 3
    check_timing(run_dir, time.time())


@pytest.mark.parametrize("fault", ["stop", "hang", "busy_worker", "mismatch"])
def test_a_hang_over_pdsh_is_named_on_its_node_and_the_job_ended(cluster, tmp_path, fault):
    from tests.integration.test_hangs import FAULTS
    from tests.integration.test_hangs import RECIPE as HANG_RECIPE

    recipe = write_recipe(tmp_path / "r.yaml", HANG_RECIPE)
    run_dir = tmp_path / fault
    proc = _hostfile_run(cluster, recipe, run_dir, cluster.hostfile(tmp_path / "hosts"), f"data.fault={fault}",
                         "data.fault_rank=1", "data.fault_after_batches=40", *FAULTS[fault][0])
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 124, output[-3000:]
    _hang_verdict(output, fault, run_dir, "node2")
    assert subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True).stdout == b""  # nothing left


@pytest.mark.parametrize("fault", ["stop", "hang", "busy_worker", "mismatch"])
def test_a_hang_on_slurm_is_named_and_the_allocation_freed_without_a_requeue(cluster, tmp_path, fault):
    from tests.integration.test_hangs import FAULTS
    from tests.integration.test_hangs import RECIPE as HANG_RECIPE

    recipe = write_recipe(tmp_path / "r.yaml", HANG_RECIPE)
    run_dir = tmp_path / fault
    job_id = _submit(cluster, recipe, run_dir, f"data.fault={fault}", "data.fault_rank=1",
                     "data.fault_after_batches=40", *FAULTS[fault][0])
    assert _wait_job(cluster, job_id, timeout=300) == "FAILED"
    output = "".join(p.read_text() for p in sorted((run_dir / "slurm").glob("*.out")))
    _hang_verdict(output, fault, run_dir, "node2")
    assert not (run_dir / "slurm" / "requeues.json").exists()
