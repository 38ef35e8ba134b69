"""Hangs named and ended (docs/faults.md 24): real `launcher run` jobs of 2 ranks on this machine,
one rank made to hang four ways. The launcher's watch sees its step stop (heartbeats), every node's
agent reads its processes from outside (py-spy, /proc), the verdict names the rank, its host, its
state and its line, and the job ends with status 124, long before the collective timeout.

cluster.hang_floor_s=5 keeps these short; test_the_defaults_* shows the shipped defaults (floor
60 s) on a recipe of millisecond steps. The same faults over pdsh and on Slurm: tests/cluster/.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, ROOT, launcher_env, metrics, write_recipe

RECIPE = f"""\
recipe: {FIXTURES / "uneven_recipe.py"}
model: {{hidden: 16, dropout: 0.0}}
data: {{samples: 96, step_delay: 0.02}}
batch: {{global: 16, micro: 4}}
train: {{steps: 500, log_every: 10}}
checkpoint: {{every_steps: 0}}
cluster: {{hang_floor_s: 5}}
"""
# fault -> (extra overrides, the verdict's words about rank 1, the line it names)
FAULTS = {
    "stop": ([], "is stopped (SIGSTOP or a debugger)", "uneven_recipe.py:{stop} in build.<locals>.inject_fault"),
    "hang": ([], "is sleeping", "uneven_recipe.py:{hang} in build.<locals>.inject_fault"),
    "busy_worker": (["data.workers=1"], "waiting for its data-loader worker pid", "uneven_recipe.py:{busy} in "
                    "build.<locals>.collate"),  # {busy}: the spinning loop's line
    "mismatch": ([], "in all_gather where the others are in another collective",
                 "uneven_recipe.py:{mismatch} in build.<locals>.inject_fault"),
}


def fault_lines() -> dict[str, int]:
    """Where each fault of the fixture sits (the line the verdict must name)."""
    text = (FIXTURES / "uneven_recipe.py").read_text().splitlines()

    def line_of(needle: str) -> int:
        return next(i for i, line in enumerate(text, start=1) if needle in line)

    return {"stop": line_of("os.kill(os.getpid(), signal.SIGSTOP)"), "hang": line_of("time.sleep(3600)"),
            "busy": line_of("itertools.count()"), "mismatch": line_of("dist.all_gather(gathered")}


def run_with_fault(tmp_path: Path, fault: str, *extra: str, recipe_text: str = RECIPE) -> tuple[str, float, Path]:
    """(the launcher's output, when it ended (time.time), the run directory)."""
    recipe = write_recipe(tmp_path / "r.yaml", recipe_text)
    run_dir = tmp_path / fault
    done = subprocess.run(["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(run_dir),
                           f"data.fault={fault}", "data.fault_rank=1", "data.fault_after_batches=40", *extra],
                          cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 124, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stderr, time.time(), run_dir


def check_timing(run_dir: Path, ended: float) -> None:
    """The verdict within 60 s of the deadline, the job ended within 90 s of it."""
    judged = json.loads((run_dir / "logs" / "hang" / "verdict.json").read_text())
    assert judged["judged_at"] - judged["deadline_passed_at"] <= 60
    assert ended - judged["deadline_passed_at"] <= 90


def verdict_of(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("launcher: hang at step"))
    return [line.removeprefix("launcher: ") for line in lines[start:] if line.startswith("launcher: ")]


def check_verdict(output: str, fault: str, run_dir: Path, host: str) -> list[str]:
    verdict = verdict_of(output)
    assert verdict[-1] == "job finished with exit status 124"  # the verdict ends the output
    verdict = verdict[:-1]
    assert len(verdict) <= 15
    _, words, where = FAULTS[fault]
    named = next(line for line in verdict if line.lstrip().startswith("rank 1 on "))
    assert f"rank 1 on {host} (pid " in named and words in named, verdict
    assert where.format(**fault_lines()) in named, verdict
    assert any(line.lstrip().startswith("rank 0 waits in") for line in verdict), verdict
    failure = json.loads((run_dir / "logs" / "failure.json").read_text())
    assert failure["exit"] == "124 (hang)" and failure["message"] == verdict[0]
    assert (failure["rank"], failure["host"]) == (1, host)  # the stuck rank, not a peer waiting for it
    alerts = [r["alert"] for r in metrics(run_dir) if "alert" in r]  # the tracker's failure alert
    assert [a["kind"] for a in alerts] == ["failure"] and alerts[0]["text"].startswith(verdict[0]), alerts
    assert list((run_dir / "logs" / "hang").glob("node-*.json"))  # every stack kept
    return verdict


def waited(verdict: list[str]) -> tuple[float, float]:
    """(seconds without progress when judged, the deadline) from the verdict's first line."""
    words = verdict[0].split()
    return float(words[words.index("progress") + 2]), float(words[words.index("deadline") + 2])


@pytest.mark.parametrize("fault", [
    "stop", pytest.param("hang", marks=pytest.mark.heavy), pytest.param("busy_worker", marks=pytest.mark.heavy),
    pytest.param("mismatch", marks=pytest.mark.heavy)])
def test_a_hung_rank_is_named_with_its_state_and_line_and_the_job_ended(tmp_path, fault):
    output, ended, run_dir = run_with_fault(tmp_path, fault, *FAULTS[fault][0])
    verdict = check_verdict(output, fault, run_dir, socket.gethostname())
    stuck_for, deadline = waited(verdict)
    assert deadline <= stuck_for <= deadline + 3  # judged within a poll or two of the deadline
    check_timing(run_dir, ended)


@pytest.mark.heavy  # a minute: the shipped floor
def test_the_defaults_name_a_stopped_rank_of_a_millisecond_recipe_within_two_minutes(tmp_path):
    recipe = RECIPE.replace("cluster: {hang_floor_s: 5}\n", "")
    output, ended, run_dir = run_with_fault(tmp_path, "stop", recipe_text=recipe)
    verdict = check_verdict(output, "stop", run_dir, socket.gethostname())
    stuck_for, deadline = waited(verdict)
    assert deadline == 60 and stuck_for <= 62
    judged = json.loads((run_dir / "logs" / "hang" / "verdict.json").read_text())
    stopped_at = judged["deadline_passed_at"] - judged["deadline_s"]  # the last time the step moved
    assert ended - stopped_at <= 120  # named and ended within two minutes of the stop


def test_a_slow_save_and_a_long_evaluation_are_no_hang(tmp_path):
    """No false alarm with a training deadline of 2 s (cluster.hang_floor_s=2; steps take about
    0.03 s): saves of 0.4 s with the third 8x slower (3.2 s: past the training deadline, inside 10x
    the longest save before it), and evaluations of 3 s, a hundred steps' time (the first save and
    the first evaluation get cluster.hang_phase_s, the later ones 10x the longest before them)."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("steps: 500", "steps: 60")
                          .replace("every_steps: 0", "every_steps: 20").replace("hang_floor_s: 5", "hang_floor_s: 2"))
    done = subprocess.run(["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(tmp_path / "run"),
                           "data.save_delay=0.4", "data.slow_save_index=3", "data.slow_save_factor=8",
                           "data.eval_delay=3", "train.eval_every=20"], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hang" not in done.stderr
    records = metrics(tmp_path / "run")
    assert [r["step"] for r in records if "eval_loss" in r] == [20, 40, 60]
    assert max(r["checkpoint_s"] for r in records if "checkpoint_s" in r) > 2  # the slow save was slow
