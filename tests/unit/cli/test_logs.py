"""`launcher logs RUN_DIR` for a run started with `launcher run` (no Slurm job): the rank's files."""

import os

from click.testing import CliRunner

from launcher.cli import main


def _run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "logs" / "torchrun").mkdir(parents=True)
    (run / "recipe.yaml").write_text("recipe: mlp_regression\n")
    (run / "plan.json").write_text("{}\n")
    return run


def _log(run, launch: str, attempt: int, rank: int, stream: str, text: str, mtime: float):
    directory = run / "logs" / "torchrun" / launch / f"attempt_{attempt}" / str(rank)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stream}.log").write_text(text)
    os.utime(run / "logs" / "torchrun" / launch, (mtime, mtime))


def test_logs_of_a_local_run_print_every_launch_and_restart_in_order(tmp_path):
    run = _run_dir(tmp_path)
    _log(run, "b-second_x", 0, 0, "stdout", "resumed at step 4\nstep 8/8\n", 2000.0)
    _log(run, "a-first_y", 1, 0, "stderr", "Traceback: boom\n", 1000.0)
    _log(run, "a-first_y", 0, 0, "stdout", "step 2/8\n", 1000.0)
    _log(run, "a-first_y", 0, 1, "stdout", "rank one's line\n", 1000.0)
    _log(run, "a-first_y", 0, 0, "stderr", "", 1000.0)  # empty: not shown
    result = CliRunner().invoke(main, ["logs", str(run)])
    assert result.exit_code == 0, result.output
    titles = [line.split(" (")[0] for line in result.output.splitlines() if line.startswith("==>")]
    assert titles == ["==> launch 1, attempt 0, rank 0 stdout", "==> launch 1, attempt 1, rank 0 stderr",
                      "==> launch 2, attempt 0, rank 0 stdout"]
    assert result.output.index("step 2/8") < result.output.index("boom") < result.output.index("step 8/8")
    assert "rank one's line" not in result.output
    other = CliRunner().invoke(main, ["logs", str(run), "--rank", "1"])
    assert other.exit_code == 0 and "rank one's line" in other.output and "step 2/8" not in other.output


def test_a_run_without_logs_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["logs", str(_run_dir(tmp_path))])
    assert result.exit_code == 2 and "no log of rank 0 yet" in result.output


def test_a_directory_that_is_no_run_keeps_the_slurm_error(tmp_path):
    result = CliRunner().invoke(main, ["logs", str(tmp_path)])
    assert result.exit_code == 2 and "no job was submitted" in result.output
