"""A new tracker is one module and one registry line: the recipe accepts its name, rank 0 opens it."""

from __future__ import annotations

import sys
import types

from launcher.config import modules
from launcher.config.schema import TrackingConfig
from launcher.tracking import make_tracker
from launcher.tracking.base import NullTracker, TrackerContext, Trackers


class Remembering(NullTracker):
    mode = "remembering"

    def __init__(self, context: TrackerContext) -> None:
        self.context, self.logged = context, []

    def log(self, record: dict, step: int) -> None:
        self.logged.append(step)


def test_a_registered_tracker_is_accepted_by_name_and_opened_on_rank_0_only(monkeypatch):
    module = types.ModuleType("remembering_tracker")
    module.open_tracker = Remembering
    monkeypatch.setitem(sys.modules, "remembering_tracker", module)
    cfg = TrackingConfig(backends=["remembering", "tensorboard"])
    assert [p[0] for p in cfg.check()] == ["backends"]  # not registered yet: an unknown tracker
    monkeypatch.setitem(modules.TRACKERS, "remembering", "remembering_tracker")  # the one line
    assert cfg.check() == []
    context = TrackerContext(cfg, "/unused", "abc123", "run")
    only = make_tracker(TrackingConfig(backends=["remembering"]), context, is_main=True)
    assert isinstance(only, Remembering) and only.context.run_id == "abc123"
    assert type(make_tracker(TrackingConfig(backends=["remembering"]), context, is_main=False)) is NullTracker


def test_wandb_listed_but_disabled_opens_nothing_and_several_trackers_fan_out(monkeypatch, tmp_path):
    module = types.ModuleType("remembering_tracker")
    module.open_tracker = Remembering
    monkeypatch.setitem(sys.modules, "remembering_tracker", module)
    monkeypatch.setitem(modules.TRACKERS, "remembering", "remembering_tracker")
    monkeypatch.setitem(modules.TRACKERS, "again", "remembering_tracker")
    cfg = TrackingConfig(backends=["wandb", "remembering", "again"], mode="disabled")
    both = make_tracker(cfg, TrackerContext(cfg, str(tmp_path), "abc123", "run"), is_main=True)
    assert isinstance(both, Trackers) and both.mode == "remembering+remembering"
    both.log({"loss": 1.0}, 3)
    assert [t.logged for t in both.trackers] == [[3], [3]]
