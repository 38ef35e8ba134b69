"""A job is finished when rank 0 recorded the end of it (past the last barrier), not when the
engine exited 0."""

from __future__ import annotations

import json

from launcher.engines.failure import unfinished
from launcher.rundir.layout import RunDir


def _record(run_dir, rank: int, **extra) -> None:
    directory = RunDir(run_dir).rank_records
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "attempt": 0, **extra}))


def test_no_rank_record_is_a_job_that_never_ran(tmp_path):
    assert "no rank of the job ever started" in unfinished(str(tmp_path))


def test_ranks_that_started_but_never_reached_the_end_are_not_a_success(tmp_path):
    _record(tmp_path, 0)
    _record(tmp_path, 1, finished=True)
    assert "rank 0 never reported the end of the job" in unfinished(str(tmp_path))


def test_rank_0_past_the_last_barrier_is_a_finished_job(tmp_path):
    _record(tmp_path, 0, finished=True)
    _record(tmp_path, 1)
    assert unfinished(str(tmp_path)) == ""
