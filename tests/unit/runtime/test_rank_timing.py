"""Straggler rules on gathered per-rank timings (pure: no processes)."""

import pytest
import torch

from launcher.runtime.rank_timing import RankTiming, StragglerWatch, summary

HOSTS = ["node-a", "node-a", "node-b", "node-b"]


def _interval(slow_data: float = 0.0, slow_compute: float = 0.0, steps: int = 10):
    """Seconds over one interval of `steps` steps: rank 2 slower by the given per-step amounts."""
    return [(0.010 * steps + (slow_data * steps if r == 2 else 0), 0.020 * steps + (slow_compute * steps if r == 2
                                                                                    else 0)) for r in range(4)]


def test_a_rank_slow_for_n_intervals_in_a_row_is_named_once_with_its_cause():
    watch = StragglerWatch(0.3, 3, HOSTS)
    assert watch.check(_interval(slow_data=0.02), 10) == []
    assert watch.check(_interval(slow_data=0.02), 10) == []
    (found,) = watch.check(_interval(slow_data=0.02), 10)
    assert (found.rank, found.host, found.cause) == (2, "node-b", "data")
    assert found.slowdown == pytest.approx(0.02 / 0.03)
    assert "rank 2 on node-b is 67% slower than the median rank for 3 log intervals; its data is slow" \
        in found.line(3)
    assert watch.check(_interval(slow_data=0.02), 10) == []  # once per episode
    watch.check(_interval(), 10)  # it recovered
    for _ in range(2):
        assert watch.check(_interval(slow_compute=0.05), 10) == []
    assert [s.cause for s in watch.check(_interval(slow_compute=0.05), 10)] == ["compute"]


def test_an_interrupted_run_of_slow_intervals_starts_counting_again():
    watch = StragglerWatch(0.3, 3, HOSTS)
    for timings in (_interval(slow_data=0.02), _interval(slow_data=0.02), _interval(), _interval(slow_data=0.02)):
        assert watch.check(timings, 10) == []


def test_small_differences_and_tiny_steps_are_not_stragglers():
    watch = StragglerWatch(0.3, 1, HOSTS)
    assert watch.check(_interval(slow_data=0.005), 10) == []  # 17% slower: under the threshold
    tiny = [(0.0001, 0.0001)] * 3 + [(0.0004, 0.0001)]  # 150% slower, but 0.03 ms per step
    assert watch.check(tiny, 10) == []
    assert StragglerWatch(0.3, 0, HOSTS).check(_interval(slow_data=1.0), 10) == []  # 0 intervals: off


def test_the_summary_gives_per_step_spread_and_the_slowest_rank():
    record = summary(_interval(slow_compute=0.05), 10, HOSTS)
    assert record["compute_s_max"] == pytest.approx(0.07) and record["compute_s_min"] == pytest.approx(0.02)
    assert record["data_s_median"] == pytest.approx(0.01)
    assert (record["slowest_rank"], record["slowest_host"]) == (2, "node-b")


def test_this_ranks_clock_adds_data_waits_and_forwards_and_starts_over_when_read():
    timing = RankTiming(torch.device("cpu"))
    timing.waited_for_data(0.25)
    with timing.forward():
        sum(range(10000))
    data, forward = timing.take()
    assert data == 0.25 and forward > 0
    assert timing.take() == (0.0, 0.0)
