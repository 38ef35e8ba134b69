"""`launcher status RUN_DIR` for a local run: state from the run directory and the process table."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from launcher.cli import main


def _run_dir(tmp_path, steps_logged: int, pid: int, host: str | None = None):
    run_dir = tmp_path / "run"
    (run_dir / "logs" / "ranks").mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text("recipe: mlp_regression\ntrain: {steps: 20}\n")
    (run_dir / "plan.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n"
                                                   for s in range(5, steps_logged + 1, 5)) + '{"step": 2')
    record = {"rank": 0, "host": host or socket.gethostname(), "pid": pid, "attempt": 1}
    (run_dir / "logs" / "ranks" / "rank-0.json").write_text(json.dumps(record))
    return run_dir


def _commit_checkpoint(root, step: int) -> None:
    from launcher.runtime.checkpoint import CheckpointManager

    def write(files) -> None:
        with files.open("model.bin") as handle:
            handle.write(bytes(range(256)) * 8)

    CheckpointManager(str(root), 2, rank=0, barrier=lambda: None).save(step, {"step": step}, write)


def _status(run_dir) -> str:
    result = CliRunner().invoke(main, ["status", str(run_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def _started(argv: list[str]) -> subprocess.Popen:
    """A process whose command line is already `argv`: right after fork it is still the parent's,
    which under load stays long enough for a status check to see another command."""
    process = subprocess.Popen(argv)
    deadline = time.monotonic() + 30
    while argv[-1].encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the process never started"
        time.sleep(0.01)
    return process


def test_a_live_rank_whose_command_line_names_the_run_is_running(tmp_path):
    run_dir = tmp_path / "run"
    sleeper = _started([sys.executable, "-c", "import time; time.sleep(60)", "--run-dir", str(run_dir)])
    try:
        _run_dir(tmp_path, 10, sleeper.pid)
        assert f"state: running: 1 rank(s) on this host (pids {sleeper.pid}); attempt 1" in _status(run_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same pid, gone (or reused by another command): stopped, resumable.
    text = _status(run_dir)
    assert "state: stopped: the same `launcher run` command resumes it" in text
    assert "last step 10/20: loss 0.1" in text  # the torn last line is skipped
    assert "latest checkpoint: none committed yet" in text


def test_a_live_process_of_another_command_is_not_this_run(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--run-dir", "/elsewhere"])
    try:
        run_dir = _run_dir(tmp_path, 20, other.pid)
        _commit_checkpoint(run_dir / "checkpoints", 20)
        text = _status(run_dir)
        assert "state: finished; attempt 1" in text
        assert f"latest checkpoint: {run_dir / 'checkpoints' / 'step-00000020'} (step 20; every file matches" in text
    finally:
        other.kill()
        other.wait()


def test_ranks_on_other_hosts_are_not_guessed_at(tmp_path):
    run_dir = _run_dir(tmp_path, 10, 1, host="node-7")
    assert "state: ranks on node-7: not checked from this host; attempt 1" in _status(run_dir)


def test_a_directory_that_is_no_run_is_an_error(tmp_path):
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 2
    assert "no job was submitted from this run directory" in result.output
