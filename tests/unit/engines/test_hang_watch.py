"""The hang watch's deadline and verdict, on heartbeat files and py-spy dumps written here (the
real processes: tests/integration/test_hangs.py and tests/cluster/)."""

from __future__ import annotations

import struct

from launcher.engines.hang_verdict import main_thread, verdict
from launcher.engines.hang_watch import HangSettings, HangWatch
from launcher.rundir.heartbeats import EVALUATING, FORMAT, SAVING, TRAINING, heartbeat_file
from launcher.rundir.layout import RunDir


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _beat(run_dir, rank: int, step: int, phase: int = TRAINING, pid: int = 100) -> None:
    path = heartbeat_file(RunDir(run_dir).heartbeats, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(FORMAT, step, phase, pid + rank))


def _watch(tmp_path, **settings) -> tuple[HangWatch, Clock]:
    clock = Clock()
    return HangWatch(tmp_path, 2, HangSettings(**{"floor_s": 5.0, "factor": 10.0, "phase_s": 600.0,
                                                   "warmup_steps": 3, **settings}), clock), clock


def _train(watch, clock, tmp_path, steps: range, seconds_per_poll: float = 1.0, per_poll: int = 2) -> None:
    for step in steps[::per_poll]:
        for rank in (0, 1):
            _beat(tmp_path, rank, step)
        assert watch.poll() is None
        clock.now += seconds_per_poll


def test_no_deadline_while_starting_or_warming_up_then_the_floor_or_ten_slowest_steps(tmp_path):
    watch, clock = _watch(tmp_path)
    _beat(tmp_path, 0, 0, phase=0)  # starting: building, restoring, joining
    clock.now += 3600
    assert watch.poll() is None
    _train(watch, clock, tmp_path, range(1, 3), per_poll=1)
    clock.now += 3600  # warm-up (steps 1-3): a compilation of an hour is no hang, nor a pace
    assert watch.poll() is None
    _train(watch, clock, tmp_path, range(3, 40))  # then 2 steps a second: 0.5 s a step
    assert watch.deadline(watch.ranks[0]) == (5.0, "10 x the slowest recent step, 0.50 s, at least 5 s")
    clock.now += 3.5  # 4.5 s since the last step moved (the helper's last poll was 1 s ago)
    assert watch.poll() is None
    clock.now += 1.0
    late = watch.poll()
    assert late is not None and late.seen.step == 39 and late.waited_s > late.deadline_s == 5.0


def test_a_hang_right_after_a_warm_up_that_one_poll_saw_whole_still_has_a_deadline(tmp_path):
    """Steps faster than the poll: the watch sees step 0 (starting), then step 20, then nothing."""
    watch, clock = _watch(tmp_path)
    for rank in (0, 1):
        _beat(tmp_path, rank, 0, phase=0)
    assert watch.poll() is None
    clock.now += 2.0  # building, the warm-up and 17 more steps between two polls
    for rank in (0, 1):
        _beat(tmp_path, rank, 20)
    assert watch.poll() is None
    assert watch.deadline(watch.ranks[0]) == (5.0, "10 x the slowest recent step, 0.10 s, at least 5 s")
    clock.now += 5.5
    late = watch.poll()
    assert late is not None and late.seen.step == 20


def test_a_slow_pace_lengthens_the_deadline_past_the_floor(tmp_path):
    watch, clock = _watch(tmp_path)
    _train(watch, clock, tmp_path, range(1, 20), seconds_per_poll=4.0, per_poll=1)  # 4 s a step
    assert watch.deadline(watch.ranks[1])[0] == 40.0
    clock.now += 35  # 39 s since the last step moved
    assert watch.poll() is None
    clock.now += 2
    assert watch.poll() is not None


def test_an_evaluation_or_save_gets_its_first_allowance_then_ten_times_the_longest_one(tmp_path):
    watch, clock = _watch(tmp_path)
    _train(watch, clock, tmp_path, range(1, 20))
    for rank in (0, 1):
        _beat(tmp_path, rank, 19, SAVING)
    watch.poll()
    clock.now += 300  # a first save of 5 minutes: inside hang_phase_s
    assert watch.poll() is None
    for rank in (0, 1):
        _beat(tmp_path, rank, 20, TRAINING)
    watch.poll()
    assert watch.phase_longest[SAVING] == 300
    for rank in (0, 1):
        _beat(tmp_path, rank, 30, EVALUATING)
    watch.poll()
    assert watch.deadline(watch.ranks[0]) == (600.0, "the first evaluating: cluster.hang_phase_s=600")
    for rank in (0, 1):
        _beat(tmp_path, rank, 40, SAVING)
    watch.poll()
    assert watch.deadline(watch.ranks[0])[0] == 3000.0  # 10 x the longest save


STOPPED = """Process 42: python worker.py
Python v3.11.7

Thread 42 (idle): "MainThread"
    build.<locals>.inject_fault (uneven_recipe.py:113)
    build.<locals>.loss (uneven_recipe.py:122)
    _train_step (launcher/runtime/trainer.py:246)
Thread 50 (idle): "pin_memory"
    get (queue.py:180)
"""
WAITING = """Thread 41 (idle): "MainThread"
    all_reduce (torch/distributed/distributed_c10d.py:2950)
    wrapper (torch/distributed/c10d_logger.py:81)
    all_reduce_sum (launcher/runtime/dist.py:38)
    _log_interval (launcher/runtime/trainer.py:277)
"""


def test_the_verdict_names_the_stopped_rank_its_line_and_who_waits_for_it():
    assert [f.where() for f in main_thread(STOPPED)][:2] == ["uneven_recipe.py:113 in build.<locals>.inject_fault",
                                                             "uneven_recipe.py:122 in build.<locals>.loss"]
    answers = [{"host": "node-a", "processes": [{"pid": 41, "parent": 1, "state": "S", "state_text": "sleeping",
                                                 "stack": WAITING}]},
               {"host": "node-b", "processes": [{"pid": 42, "parent": 1, "state": "T", "state_text": "stopped",
                                                 "stack": STOPPED}]}]
    judged = verdict("hang at step 20", answers, {0: (20, 41), 1: (20, 42)}, "RUN/logs/hang", "  ended")
    lines = judged.lines
    assert lines == [
        "hang at step 20",
        "  rank 1 on node-b (pid 42) is stopped (SIGSTOP or a debugger): uneven_recipe.py:113 in "
        "build.<locals>.inject_fault <- not in the collective",
        "  rank 0 waits in all_reduce (from dist.py:38 in all_reduce_sum)",
        "  every process's stack and state: RUN/logs/hang",
        "  ended"]
    assert judged.stuck == [(1, "node-b")]  # what failure.json and `launcher status` name


def test_without_answers_the_verdict_says_so_and_keeps_the_heartbeats():
    judged = verdict("hang at step 7", [], {0: (7, 1), 1: (6, 2)}, "RUN/logs/hang", "  ended")
    lines = judged.lines
    assert judged.stuck == [(1, "?")]  # behind the others: the rank failure.json names
    assert lines[1] == "  rank 1 is at step 6, behind the others (no stack read)"
    assert "no node answered with its stacks" in lines[2] and "rank 1 at step 6" in lines[2]
    assert len(lines) <= 15
