"""W&B as a tracker: global rank 0 only, one run per job, never in the way of training.

- The run id is made once per job by the launcher (run dir `tracking.json`), stored in every
  checkpoint and reused on restart, requeue and resume: a preempted job continues the same run.
- The step axis is our global optimizer step, logged as the metric `global_step` rather than
  W&B's internal `_step`, so re-logging steps after a resume from an earlier checkpoint is
  recorded instead of being dropped as "step went backwards".
- `auto` is online with credentials and offline otherwise; an unreachable server at start falls
  back to offline after a bounded timeout; any tracker error later disables the tracker with one
  warning and training goes on. wandb is imported only in these functions.
- With `tracking.system_metrics: all_nodes` every node writes its machine's metrics into the same
  run under its own label (W&B's shared mode; tracking/nodes.py starts the other nodes' writers).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from launcher.tracking.base import NullTracker, TrackerContext


def open_tracker(context: TrackerContext):
    """Rank 0's W&B run (a NullTracker when W&B cannot start even offline)."""
    cfg = context.cfg
    mode = resolved_mode(cfg.mode)
    if cfg.mode == "auto" and mode == "offline":
        say(f"no W&B credentials: logging offline under {context.run_dir}/wandb; upload later with "
            f"`wandb sync {context.run_dir}/wandb/offline-run-*`")
    import wandb

    def settings_for(chosen: str):
        if context.label and shared_mode_available():
            return node_settings(chosen, context.label, primary=True, init_timeout=cfg.init_timeout)
        return wandb.Settings(init_timeout=cfg.init_timeout, silent=True)

    def init(chosen: str):
        settings = settings_for(chosen)
        run = wandb.init(project=cfg.project, entity=cfg.entity or None, name=cfg.name or context.run_name,
                         group=cfg.group or None, tags=list(cfg.tags) or None, notes=cfg.notes or None,
                         id=context.run_id, resume="allow", dir=context.run_dir, config=context.config,
                         mode=None if settings.mode == "shared" else chosen, settings=settings)
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        return run

    try:
        return WandbTracker(init(mode), mode)
    except Exception as exc:  # noqa: BLE001 - no network, bad key, server down: keep training
        if mode != "online":
            say(f"W&B {mode} init failed ({type(exc).__name__}: {exc}); tracking disabled")
            return NullTracker()
        say(f"W&B online init failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            f"fell back to offline: upload later with `wandb sync {context.run_dir}/wandb/offline-run-*`")
        try:
            return WandbTracker(init("offline"), "offline")
        except Exception as second:  # noqa: BLE001
            say(f"W&B offline init failed too ({second}); tracking disabled")
            return NullTracker()


class WandbTracker:
    def __init__(self, run, mode: str) -> None:
        self.run, self.mode = run, mode

    def _guard(self, action, *args) -> None:
        if self.run is None:
            return
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001 - the tracker must never stop training
            say(f"W&B failed ({type(exc).__name__}: {exc}); tracking disabled, training continues "
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


def has_wandb_credentials(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    netrc = Path(env.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text(encoding="utf-8") or bool(env.get("WANDB_BASE_URL"))
    except OSError:
        return False


def resolved_mode(mode: str) -> str:
    """`auto`: online with credentials, offline without."""
    if mode == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return mode


def node_label() -> str:
    import socket

    return socket.gethostname().split(".")[0]


def shared_mode_available() -> bool:
    import wandb

    fields = getattr(wandb.Settings, "model_fields", {})
    return all(name in fields for name in ("x_label", "x_primary", "x_update_finish_state"))


def node_settings(mode: str, label: str, primary: bool, init_timeout: float):
    """wandb.Settings of one writer: `shared` online, plain offline otherwise, labelled either way."""
    import wandb

    extra = {} if primary else {"x_update_finish_state": False}
    return wandb.Settings(mode="shared" if mode == "online" else "offline", x_label=label, x_primary=primary,
                          init_timeout=init_timeout, silent=True, **extra)


def say(message: str) -> None:
    print(f"tracking: {message}", file=sys.stderr, flush=True)
