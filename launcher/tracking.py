"""Experiment tracking: W&B on global rank 0 only, one run per job, never in the way of training.

- The run id is made once per job by the launcher (run dir `tracking.json`), stored in every
  checkpoint and reused on restart, requeue and resume: a preempted job continues the same run.
- The step axis is our global optimizer step, logged as the metric `global_step` rather than
  W&B's internal `_step`, so re-logging steps after a resume from an earlier checkpoint is
  recorded instead of being dropped as "step went backwards".
- `auto` is online with credentials and offline otherwise; an unreachable server at start falls
  back to offline after a bounded timeout; any tracker error later disables the tracker with one
  warning and training goes on. wandb is imported only here, only on rank 0.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from launcher.rundir.layout import RunDir


def job_run_id(run_dir: str) -> str:
    """The tracker run id of this run directory, created on first use (launcher side, no wandb)."""
    path = RunDir(run_dir).tracking
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))["run_id"]
    run_id = secrets.token_hex(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id}) + "\n", encoding="utf-8")
    return run_id


def has_wandb_credentials(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    netrc = Path(env.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(encoding="utf-8") or bool(env.get("WANDB_BASE_URL"))
    except OSError:
        return False


def wandb_on(cfg) -> bool:
    """W&B is among tracking.backends and tracking.mode does not disable it."""
    return "wandb" in cfg.backends and cfg.mode != "disabled"


def node_label() -> str:
    import socket

    return socket.gethostname().split(".")[0]


def _say(message: str) -> None:
    print(f"tracking: {message}", file=sys.stderr, flush=True)


class NullTracker:
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


class WandbTracker:
    def __init__(self, run, mode: str) -> None:
        self.run, self.mode = run, mode

    def _guard(self, action, *args) -> None:
        if self.run is None:
            return
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001 - the tracker must never stop training
            _say(f"W&B failed ({type(exc).__name__}: {exc}); tracking disabled, training continues "
                 "(metrics.jsonl keeps every step)")
            self.run = None

    def log(self, record: dict, step: int) -> None:
        self._guard(lambda: self.run.log({**record, "global_step": step}))

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        import wandb

        self._guard(lambda: self.run.log({name: wandb.Table(columns=columns, data=rows), "global_step": step}))

    def log_image(self, name: str, path: str, step: int) -> None:
        import wandb

        self._guard(lambda: self.run.log({name: wandb.Image(path), "global_step": step}))

    def log_model(self, directory: str, name: str) -> None:
        import wandb

        def upload():
            artifact = wandb.Artifact(name=name, type="model")
            artifact.add_dir(directory)
            self.run.log_artifact(artifact)

        self._guard(upload)

    def alert(self, kind: str, title: str, text: str, level: str, wait_s: float) -> None:
        """wandb's own alert (email or Slack, as the user's W&B settings say; offline: kept in the run
        file). wait_duration: W&B too drops a repeat of the same title within that time."""
        import wandb

        self._guard(lambda: self.run.alert(title=title, text=text, level=getattr(wandb.AlertLevel, level),
                                           wait_duration=max(1, int(wait_s))))

    def finish(self, exit_code: int = 0) -> None:
        self._guard(lambda: self.run.finish(exit_code=exit_code))


class SkipLoggedSteps:
    """Forwards to a tracker, except steps at or before `floor` (already logged by a prior attempt)."""

    def __init__(self, tracker, floor: int) -> None:
        self.tracker, self.floor = tracker, floor

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


class Trackers:
    """Every configured tracker gets every call (W&B and TensorBoard side by side)."""

    def __init__(self, trackers: list) -> None:
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


def make_tracker(cfg, run_dir: str, run_id: str, run_name: str, config: dict, is_main: bool):
    """cfg: the recipe's TrackingConfig. Returns a tracker; only rank 0 ever gets a real one.
    W&B runs when it is among tracking.backends and tracking.mode is not `disabled`; TensorBoard
    whenever it is among them."""
    if not is_main:
        return NullTracker()
    trackers = []
    if wandb_on(cfg):
        label = node_label() if cfg.system_metrics == "all_nodes" else ""
        trackers.append(_wandb_tracker(cfg, run_dir, run_id, run_name, config, label))
    if "tensorboard" in cfg.backends:
        from launcher.tracking_tensorboard import TensorBoardTracker

        trackers.append(TensorBoardTracker(RunDir(run_dir).tensorboard))
    trackers = [t for t in trackers if not isinstance(t, NullTracker)]
    if not trackers:
        return NullTracker()
    return trackers[0] if len(trackers) == 1 else Trackers(trackers)


def resolved_mode(mode: str) -> str:
    """`auto`: online with credentials, offline without."""
    if mode == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return mode


def _wandb_tracker(cfg, run_dir: str, run_id: str, run_name: str, config: dict, label: str = ""):
    """label: global rank 0's node name, when every node writes into the run (tracking_nodes.py)."""
    mode = resolved_mode(cfg.mode)
    if cfg.mode == "auto" and mode == "offline":
        _say(f"no W&B credentials: logging offline under {run_dir}/wandb; upload later with "
             f"`wandb sync {run_dir}/wandb/offline-run-*`")
    import wandb

    def settings_for(chosen: str):
        if label:
            from launcher.tracking_nodes import node_settings, shared_mode_available

            if shared_mode_available():
                return node_settings(chosen, label, primary=True, init_timeout=cfg.init_timeout)
        return wandb.Settings(init_timeout=cfg.init_timeout, silent=True)

    def init(chosen: str):
        settings = settings_for(chosen)
        run = wandb.init(project=cfg.project, entity=cfg.entity or None, name=cfg.name or run_name,
                         group=cfg.group or None, tags=list(cfg.tags) or None, notes=cfg.notes or None,
                         id=run_id, resume="allow", dir=run_dir, config=config,
                         mode=None if settings.mode == "shared" else chosen, settings=settings)
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        return run

    try:
        return WandbTracker(init(mode), mode)
    except Exception as exc:  # noqa: BLE001 - no network, bad key, server down: keep training
        if mode != "online":
            _say(f"W&B {mode} init failed ({type(exc).__name__}: {exc}); tracking disabled")
            return NullTracker()
        _say(f"W&B online init failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
             f"fell back to offline: upload later with `wandb sync {run_dir}/wandb/offline-run-*`")
        try:
            return WandbTracker(init("offline"), "offline")
        except Exception as second:  # noqa: BLE001
            _say(f"W&B offline init failed too ({second}); tracking disabled")
            return NullTracker()
