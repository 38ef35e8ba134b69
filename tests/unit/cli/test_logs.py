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


def _ranks(run, *records):
    import json

    directory = run / "logs" / "ranks"
    directory.mkdir(parents=True, exist_ok=True)
    for record in records:
        (directory / f"rank-{record['rank']}.json").write_text(json.dumps(record))


def test_a_healthy_silent_rank_and_a_rank_the_run_does_not_have_are_told_apart(tmp_path):
    """Issue 32: `--rank 1` of a healthy run said "a run that never started its ranks has none";
    `--rank 5` of a 2-rank run did not say which ranks exist."""
    run = _run_dir(tmp_path)
    _log(run, "a_x", 0, 0, "stdout", "step 2/2\n", 1000.0)
    _log(run, "a_x", 0, 1, "stdout", "", 1000.0)
    _ranks(run, {"rank": 0, "local_rank": 0, "host": "h"}, {"rank": 1, "local_rank": 1, "host": "h"})
    silent = CliRunner().invoke(main, ["logs", str(run), "--rank", "1"])
    assert silent.exit_code == 2 and "rank 1 wrote nothing to its logs" in silent.output
    missing = CliRunner().invoke(main, ["logs", str(run), "--rank", "5"])
    assert missing.exit_code == 2 and "no local rank 5 on any node (this run's nodes have local ranks 0-1)" \
        in missing.output


def test_on_two_nodes_each_nodes_logs_name_it_and_one_node_can_be_chosen(tmp_path):
    run = _run_dir(tmp_path)
    torchrun = run / "logs" / "torchrun"
    _log(run, "job_nodea", 0, 0, "stdout", "node a's rank 0\n", 1000.0)
    _log(run, "job_nodeb", 0, 0, "stdout", "node b's rank 0\n", 1001.0)
    _ranks(run, {"rank": 0, "local_rank": 0, "host": "node-a", "log_dir": str(torchrun / "job_nodea/attempt_0/0")},
           {"rank": 1, "local_rank": 0, "host": "node-b", "log_dir": str(torchrun / "job_nodeb/attempt_0/0")})
    both = CliRunner().invoke(main, ["logs", str(run)])
    titles = [line.split(" (")[0] for line in both.output.splitlines() if line.startswith("==>")]
    assert titles == ["==> launch 1, attempt 0, rank 0 stdout on node-a",
                      "==> launch 2, attempt 0, rank 0 stdout on node-b"]
    one = CliRunner().invoke(main, ["logs", str(run), "--host", "node-b"])
    assert one.exit_code == 0 and "node b's rank 0" in one.output and "node a's" not in one.output
    unknown = CliRunner().invoke(main, ["logs", str(run), "--host", "node-c"])
    assert unknown.exit_code == 2 and "no node node-c in this run (its nodes: node-a, node-b)" in unknown.output
