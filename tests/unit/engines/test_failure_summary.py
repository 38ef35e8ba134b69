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


# A real stall dump (faulthandler), with a second thread listed first and rank output after it.
STALL_LOG = """step 2/12 | loss 1.0
Timeout (0:00:07.200000)!
Thread 0x00007fb8aaaa0640 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 320 in wait
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap
Thread 0x00007fb880e1cb80 (most recent call first):
  File "/venv/lib/python3.11/site-packages/torch/autograd/graph.py", line 1072 in _engine_run_backward
  File "/venv/lib/python3.11/site-packages/torch/_tensor.py", line 623 in backward
  File "/work/launcher/runtime/trainer.py", line 133 in _loop
  File "<frozen runpy>", line 88 in _run_code
rank 0: a collective timed out after cluster.collective_timeout=8s
"""


def test_a_stall_dump_gives_each_rank_where_its_main_thread_stood():
    frames = failure.stall_frames(STALL_LOG, 0x00007fb880e1cb80)
    assert frames[0] == ("/venv/lib/python3.11/site-packages/torch/autograd/graph.py", 1072, "_engine_run_backward")
    assert len(frames) == 4  # the rank's own line after the dump is not a frame
    assert failure.describe_stall(frames) == ("torch/autograd/graph.py:1072 in _engine_run_backward "
                                              "(from /work/launcher/runtime/trainer.py:133 in _loop)")
    assert failure.stall_frames(STALL_LOG, None) == frames  # unknown id: the last thread, CPython's main
    assert failure.stall_frames("no dump here\n", None) == []


def test_the_summary_lists_the_stalled_ranks_after_the_first_failure(tmp_path):
    _rank(tmp_path, 0, "RuntimeError: timed out", written_at=1700000000.2)
    _rank(tmp_path, 1, "", written_at=1700000009.0)
    log = tmp_path / "logs" / "attempt_2" / "1" / "stderr.log"
    log.write_text('Timeout (0:00:07)!\nThread 0x1 (most recent call first):\n'
                   '  File "/work/my_recipe.py", line 87 in load_batch\n')
    summary = failure.summarize(str(tmp_path), exit_status=1)
    assert summary.rank == 0
    assert summary.stalls == ("rank 1: /work/my_recipe.py:87 in load_batch",)
    assert "rank 1: /work/my_recipe.py:87 in load_batch" in failure.render(summary, max_restarts=0)
