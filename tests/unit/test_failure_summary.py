"""The failure summary names the rank that failed first, even when torchrun's stamps tie."""

from __future__ import annotations

import json
import os

from launcher.engines import failure


def _rank(run_dir, rank: int, message: str, written_at: float) -> None:
    log_dir = run_dir / "logs" / "attempt_2" / str(rank)
    log_dir.mkdir(parents=True)
    error = {"message": {"message": message, "extraInfo": {"py_callstack": "", "timestamp": "1700000000"}}}
    (log_dir / "error.json").write_text(json.dumps(error))
    os.utime(log_dir / "error.json", (written_at, written_at))
    (log_dir / "stderr.log").write_text(f"line from rank {rank}\n{message}\n")
    ranks = run_dir / "logs" / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "local_rank": rank, "host": "node-a", "pid": 1, "attempt": 2, "log_dir": str(log_dir)}
    (ranks / f"rank-{rank}.json").write_text(json.dumps(record))


def test_the_earliest_written_error_wins_when_torchruns_whole_second_stamps_tie(tmp_path):
    # Rank 1 raised; rank 0 failed 0.3 s later because its peer vanished. Both stamps read the same
    # whole second, so ordering by them would name rank 0.
    _rank(tmp_path, 1, "ValueError: injected failure on rank 1", written_at=1700000000.2)
    _rank(tmp_path, 0, "RuntimeError: Connection closed by peer", written_at=1700000000.5)
    summary = failure.summarize(str(tmp_path), exit_status=1)
    assert summary is not None
    assert (summary.rank, summary.attempts) == (1, 3)
    assert summary.message == "ValueError: injected failure on rank 1"
    assert summary.tail[-1] == "ValueError: injected failure on rank 1"


def test_a_rank_with_an_error_file_comes_before_one_killed_without_it(tmp_path):
    _rank(tmp_path, 1, "ValueError: boom", written_at=1700000005.0)
    (tmp_path / "logs" / "ranks" / "rank-0.json").write_text(json.dumps(
        {"rank": 0, "local_rank": 0, "host": "node-a", "pid": 2, "attempt": 2,
         "log_dir": str(tmp_path / "logs" / "attempt_2" / "0")}))
    summary = failure.summarize(str(tmp_path), exit_status=137)
    assert summary is not None and summary.rank == 1
    assert summary.exit == "1 (Python exception)"
