"""The Tracker protocol: what rank 0's training loop hands every tracker, and the few pieces every
tracker shares (the no-op tracker, the fan-out to several, the filter of steps already logged).

A tracker is one module with `open_tracker(context) -> Tracker` (wandb_tracker.py and
tensorboard_tracker.py are the built-in ones) and one line in the registry that names it
(launcher/config/modules.py: TRACKERS). `tracking.backends` in a recipe lists registered names,
or a tracker module of the user's own (a dotted module, or a .py file beside the recipe), like
`recipe:` does. A tracker never stops training: it catches its own errors, says so once, and
turns itself off; metrics.jsonl keeps every step whatever the trackers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class TrackerContext:
    """What a tracker is opened with (on global rank 0, or a node's own writer)."""

    cfg: Any  # the recipe's TrackingConfig
    run_dir: str
    run_id: str  # one per run directory, kept in every checkpoint: a resumed job continues its run
    run_name: str
    config: dict = field(default_factory=dict)  # the resolved recipe and the launch, secrets redacted
    label: str = ""  # this node's name when every node records its machine (system_metrics: all_nodes)


class Tracker(Protocol):
    mode: str  # what the console says it is ("offline", "tensorboard", ...)

    def log(self, record: dict, step: int) -> None:
        """One metrics record (numbers and a few strings) at the global optimizer step."""

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...

    def log_image(self, name: str, path: str, step: int) -> None: ...

    def log_model(self, directory: str, name: str) -> None:
        """The exported model, once, at the end (tracking.log_model)."""

    def alert(self, kind: str, title: str, text: str, level: str, wait_s: float) -> None:
        """An alert (tracking/alerts.py says which and when); level: INFO, WARN or ERROR."""

    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """Every call ignored: the ranks but 0, and a base for trackers that keep only some calls."""

    mode = "disabled"

    def log(self, record: dict, step: int) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        pass

    def log_image(self, name: str, path: str, step: int) -> None:
        pass

    def log_model(self, directory: str, name: str) -> None:
        pass

    def alert(self, kind: str, title: str, text: str, level: str, wait_s: float) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class Trackers:
    """Every configured tracker gets every call (W&B and TensorBoard side by side)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers
        self.mode = "+".join(t.mode for t in trackers)

    def log(self, record: dict, step: int) -> None:
        for tracker in self.trackers:
            tracker.log(record, step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_table(name, columns, rows, step)

    def log_image(self, name: str, path: str, step: int) -> None:
        for tracker in self.trackers:
            tracker.log_image(name, path, step)

    def log_model(self, directory: str, name: str) -> None:
        for tracker in self.trackers:
            tracker.log_model(directory, name)

    def alert(self, kind: str, title: str, text: str, level: str, wait_s: float) -> None:
        for tracker in self.trackers:
            tracker.alert(kind, title, text, level, wait_s)

    def finish(self, exit_code: int = 0) -> None:
        for tracker in self.trackers:
            tracker.finish(exit_code)


class SkipLoggedSteps:
    """Forwards to a tracker, except steps at or before `floor` (already logged by a prior attempt)."""

    def __init__(self, tracker: Tracker, floor: int) -> None:
        self.tracker, self.floor = tracker, floor
        self.mode = tracker.mode

    def log(self, record: dict, step: int) -> None:
        if step > self.floor:
            self.tracker.log(record, step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if step > self.floor:
            self.tracker.log_table(name, columns, rows, step)

    def log_image(self, name: str, path: str, step: int) -> None:
        if step > self.floor:
            self.tracker.log_image(name, path, step)

    def log_model(self, directory: str, name: str) -> None:
        self.tracker.log_model(directory, name)

    def alert(self, kind: str, title: str, text: str, level: str, wait_s: float) -> None:
        self.tracker.alert(kind, title, text, level, wait_s)

    def finish(self, exit_code: int = 0) -> None:
        self.tracker.finish(exit_code)
