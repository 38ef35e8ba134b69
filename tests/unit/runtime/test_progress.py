"""Rank 0's step line: elapsed time and an ETA from the measured step time."""

from launcher.runtime.metrics import Progress, console_line, duration


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (0, 9.6, 59, 60, 245, 3599, 3600, 11220)] == \
        ["0s", "10s", "59s", "1m00s", "4m05s", "59m59s", "1h00m", "3h07m"]


def test_eta_is_the_remaining_steps_at_the_smoothed_step_time():
    progress = Progress(end_step=100, started=1000.0)
    assert progress.text(10, 0.5, now=1010.0) == "elapsed 10s | eta 45s"  # 90 steps x 0.5 s
    # One slow interval (an eval-heavy host hiccup) moves the ETA by 30% of the change, not all of it.
    assert progress.text(20, 1.5, now=1030.0) == "elapsed 30s | eta 1m04s"  # 80 x 0.8 s
    assert progress.text(100, 0.5, now=1100.0) == "elapsed 1m40s"  # done: no ETA


def test_the_step_line_ends_with_progress():
    record = {"step": 10, "loss": 1.23456, "lr": 1e-3, "samples_per_s": 51.25, "step_time_s": 0.5}
    line = console_line(record, 100, "elapsed 10s | eta 45s")
    assert line == "step 10/100 | loss 1.2346 | lr 1.000e-03 | samples_per_s 51.2 | elapsed 10s | eta 45s"
