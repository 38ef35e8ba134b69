"""What a person watching the console sees: the launcher's lines and rank 0's, not the libraries'.

Real torchrun, DeepSpeed and Accelerate on CPU. A healthy 2-process ZeRO-3 run printed 46 foreign
lines on main 3b60060 (torchrun's OMP banner, DeepSpeed's accelerator warning and op banner,
"No CUDA runtime is found", a FutureWarning pair per ZeRO step); a failing run 125 lines, the
rank's traceback three times over; a stop, torchrun's SignalException traceback.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import ROOT, launch, launcher_env, metrics, wait_for_step, write_recipe
from tests.integration.test_faults import FAULT_RECIPE  # the same 12-step, 2-rank fault recipe

# Ours: the launcher's own lines, rank 0's step and eval lines, and its stop notices.
OURS = re.compile(r"^(launcher: |torchrun: |\[rank0\]: (step \d+/\d+ \||stopped ))")


def _env() -> dict[str, str]:
    env = launcher_env()
    env.pop("OMP_NUM_THREADS", None)  # as in a fresh shell: the launcher decides it
    return env


def _foreign(console: str) -> list[str]:
    return [line for line in console.splitlines() if line.strip() and not OURS.match(line)]


def test_a_healthy_zero3_run_shows_our_lines_only_and_keeps_the_rest_in_the_rank_logs(tmp_path):
    run_dir = tmp_path / "zero3"
    result = launch(ROOT / "recipes" / "mlp-tiny.yaml", run_dir, "backend.name=deepspeed", "backend.zero_stage=3",
                    "train.steps=8", "train.stop_after_steps=6", "train.log_every=1", "checkpoint.every_steps=3",
                    "scheduler.warmup_steps=2", nproc=2, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert len(_foreign(console)) <= 2, _foreign(console)
    assert "\x1b" not in console and "\r" not in console  # not a terminal: plain lines, no live bar
    # Progress: elapsed time on each step line, and an ETA to the step this invocation stops at. The
    # elapsed time counts from the launch: on a machine where DeepSpeed first builds its CPU op it
    # passes a minute before step 1.
    assert re.search(r"step 3/8 \| .* \| elapsed (\d+m)?\d+s \| eta \d+s$", console, re.M), console
    # A time-boxed run says where it stopped and how to go on.
    assert "stopped early after step 6 of 8 (train.stop_after_steps=6): checkpoint committed; " \
           "run the same command to continue" in console
    # Nothing is lost: what the console held back is in each rank's file.
    kept = (run_dir / "logs" / "ranks" / "rank-0-quieted.log").read_text()
    assert "is deprecated" in kept and "FutureWarning" in kept


def test_a_failing_rank_is_told_once_with_the_cause_at_the_end(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE)
    run_dir = tmp_path / "failing"
    result = launch(recipe, run_dir, "data.fault=raise", "data.fault_rank=0", "data.fault_after_batches=5", nproc=2,
                    env=_env(), timeout=300)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    end = "\n".join(lines[-15:])
    assert "ValueError: injected failure on rank 0" in end
    assert re.search(r"first failure: rank 0 \(local rank 0\) on host \S+", end), end
    assert re.search(r"last lines of \S+/attempt_0/0/stderr\.log", end), end
    assert "ChildFailedError" not in "\n".join(lines) and "[rank0]: [rank0]:" not in "\n".join(lines)
    full = (run_dir / "logs" / "ranks" / "rank-0-traceback.txt").read_text()
    assert "in _build_and_train" in full and "in inject_fault" in full  # the whole traceback, kept


def test_a_stop_on_a_signal_ends_without_a_traceback(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE.replace("step_delay: 0.0", "step_delay: 0.2")
                          .replace("steps: 12", "steps: 200"))
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(run_dir)], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, 3, timeout=120, proc=proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    console, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, console
    assert "Traceback" not in console and "SignalException" not in console, console
    assert re.search(r"stopped by SIGTERM after step \d+: checkpoint committed", console), console
    assert Path(run_dir / "checkpoints" / "latest").exists()
    # The stop is an alert (metrics.jsonl always; the trackers when on), with the step it stopped at.
    (alert,) = [r for r in metrics(run_dir) if "alert" in r]
    stopped_at = int(re.search(r"stopped by SIGTERM after step (\d+)", console).group(1))
    assert alert["alert"]["kind"] == "preemption" and alert["step"] == stopped_at, alert


def _on_a_terminal(argv: list[str], timeout: float = 300) -> tuple[int, str]:
    """Runs argv with a pseudo-terminal as stdin, stdout and stderr; its exit status and output."""
    import os
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once (no Python clean-up of the test process in it)
        env = {**_env(), "TERM": "xterm", "COLUMNS": "100"}
        os.chdir(ROOT)
        os.execvpe(argv[0], argv, env)
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        output += data
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode("utf-8", "replace")


def test_on_a_terminal_a_live_bar_runs_under_whole_step_lines(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE.replace("step_delay: 0.0", "step_delay: 0.1")
                          .replace("steps: 12", "steps: 30"))
    status, output = _on_a_terminal(["launcher", "run", str(recipe), "--nproc", "1", "--run-dir",
                                     str(tmp_path / "run"), "train.log_every=10"])
    assert status == 0, output[-3000:]
    frames = re.findall(r"\r\x1b\[K(\[[#.]+\] (\d+)/30 +\d+%[^\r\n]*)", output)
    assert len(frames) >= 3, output[-3000:]
    steps = [int(step) for _, step in frames]
    assert steps == sorted(steps) and 0 < steps[0] < 30, steps  # between the log lines, moving forward
    assert any(" steps/s | eta " in text for text, _ in frames)
    # Each step line is written whole at the start of a line (the bar cleared first), never mixed into it.
    for step in (10, 20, 30):
        assert re.search(rf"\x1b\[K\[rank0\]: step {step}/30 \|[^\r\x1b]*\r\n", output), output[-3000:]
    # The bar is gone before the launcher's last line.
    assert re.search(r"\x1b\[Klauncher: job finished with exit status 0\r\n$", output), output[-300:]
