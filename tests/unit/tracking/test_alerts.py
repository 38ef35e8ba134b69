"""Alerts: the wanted kinds only, one per kind per interval, recorded and sent alike."""

from launcher.tracking.alerts import Alerts


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def alert(self, kind, title, text, level, wait_s) -> None:
        self.sent.append((kind, title, level, wait_s))


def test_alerts_are_rate_limited_per_kind_and_recorded_as_sent():
    now = [0.0]
    tracker, records = Recorder(), []
    alerts = Alerts(["straggler", "nonfinite"], 600, tracker, records.append, clock=lambda: now[0])
    assert alerts.send("straggler", 10, "straggler rank 1", "slow")
    assert not alerts.send("straggler", 20, "straggler rank 1", "still slow")  # within the interval
    assert alerts.send("nonfinite", 20, "nan", "NaN")  # another kind has its own clock
    assert not alerts.send("completion", 30, "done", "done")  # not among the wanted kinds
    now[0] = 600.0
    assert alerts.send("straggler", 40, "straggler rank 1", "slow again")
    assert [r["step"] for r in records] == [10, 20, 40]
    assert [s[0] for s in tracker.sent] == ["straggler", "nonfinite", "straggler"]
    assert tracker.sent[0][2:] == ("WARN", 600) and tracker.sent[1][2] == "ERROR"
    assert records[0]["alert"] == {"kind": "straggler", "level": "WARN", "title": "straggler rank 1", "text": "slow"}


def test_unknown_alert_kinds_are_named_in_the_recipe():
    from launcher.config.schema import TrackingConfig

    problems = TrackingConfig(alerts=["failure", "nan"], alert_interval_s=-1).check()
    assert [p[0] for p in problems] == ["alerts", "alert_interval_s"]
    assert "use any of failure, preemption, nonfinite, straggler, completion" in problems[0][2]


def test_every_node_joins_the_one_run_as_a_labelled_secondary_writer():
    from launcher.config.schema import TrackingConfig
    from launcher.tracking.nodes import writes_node_metrics
    from launcher.tracking.wandb_tracker import node_settings

    all_nodes = TrackingConfig(mode="offline", system_metrics="all_nodes")
    # Local rank 0 of the nodes other than global rank 0's: one writer per node.
    assert [writes_node_metrics(all_nodes, rank, local) for rank, local in ((0, 0), (1, 1), (4, 0), (5, 1))] \
        == [False, False, True, False]
    assert not writes_node_metrics(TrackingConfig(mode="offline"), 4, 0)  # rank 0's machine only, by default
    assert not writes_node_metrics(TrackingConfig(mode="disabled", system_metrics="all_nodes"), 4, 0)
    # Online, the settings as wandb accepts them for its shared mode: labelled, not the primary, and
    # never the one to decide the run's final state.
    secondary = node_settings("online", "node7", primary=False, init_timeout=30)
    assert (secondary.mode, secondary.x_label, secondary.x_primary, secondary.x_update_finish_state) == \
        ("shared", "node7", False, False)
    primary = node_settings("online", "node1", primary=True, init_timeout=30)
    assert (primary.mode, primary.x_label, primary.x_primary, primary.x_update_finish_state) == \
        ("shared", "node1", True, True)
    assert node_settings("offline", "node7", primary=False, init_timeout=30).mode == "offline"
