"""Experiment tracking on the ranks: every tracker behind one protocol (base.py), opened by name.

    make_tracker(cfg, context, is_main)   rank 0's trackers for tracking.backends, as one
    alerts.py                             the events pushed to the user, through the trackers
    nodes.py                              every node's machine in the one W&B run (all_nodes)

A tracker is a module with `open_tracker(context)`; the registry of names is
launcher/config/modules.py (TRACKERS), where the recipe's keys are checked without importing any
tracker. A recipe may also name a module of its own, as it names its recipe module.
"""

from __future__ import annotations

from launcher.config.modules import import_reference, resolve_tracker
from launcher.tracking.base import NullTracker, Tracker, TrackerContext, Trackers


def make_tracker(cfg, context: TrackerContext, is_main: bool) -> Tracker:
    """cfg: the recipe's TrackingConfig. Only global rank 0 ever gets a real tracker. W&B runs when
    it is among tracking.backends and tracking.mode is not `disabled`; every other tracker whenever
    it is among them."""
    if not is_main:
        return NullTracker()
    trackers = []
    for name in cfg.backends:
        if name == "wandb" and not cfg.uses_wandb:
            continue
        module = import_reference(resolve_tracker(name))
        trackers.append(module.open_tracker(context))
    trackers = [t for t in trackers if type(t) is not NullTracker]  # one that could not start
    if not trackers:
        return NullTracker()
    return trackers[0] if len(trackers) == 1 else Trackers(trackers)
