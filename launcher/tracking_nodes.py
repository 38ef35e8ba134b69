"""Every node's machine in the job's one W&B run (`tracking.system_metrics: all_nodes`).

Global rank 0 writes the training metrics, as always. With all_nodes, local rank 0 of every other
node joins the same run (the job's run id) as a secondary writer labelled with its node name:
W&B's "shared" mode, in which each writer's system metrics (CPU, memory, GPU) arrive under its
label (`cpu/l:node7`) and only the primary decides the run's final state. An offline run writes
the same labelled stats into the node's own run file (RUN_DIR/wandb-nodes/<node>/, so nodes on a
shared filesystem never write into one directory); `wandb sync` uploads them to the same run id.
A wandb without shared mode (before 0.19.9) keeps rank 0's machine only, and says so once.
"""

from __future__ import annotations

import sys

from launcher.rundir.layout import RunDir


def writes_node_metrics(cfg, rank: int, local_rank: int) -> bool:
    """Whether this rank starts its node's secondary writer."""
    from launcher.tracking import wandb_on

    return cfg.system_metrics == "all_nodes" and wandb_on(cfg) and local_rank == 0 and rank != 0


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


def start_node_writer(cfg, run_dir: str, run_id: str, label: str = ""):
    """This node's secondary writer (a tracker whose finish() ends it), or a NullTracker."""
    from launcher.tracking import NullTracker, WandbTracker, node_label, resolved_mode

    label = label or node_label()
    if not shared_mode_available():
        print("tracking: tracking.system_metrics=all_nodes needs wandb >= 0.19.9 (shared mode); "
              f"{label} is not recorded, rank 0's machine is", file=sys.stderr, flush=True)
        return NullTracker()
    import wandb

    mode = resolved_mode(cfg.mode)
    directory = RunDir(run_dir).root / "wandb-nodes" / label
    directory.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(project=cfg.project, entity=cfg.entity or None, id=run_id, dir=str(directory),
                         settings=node_settings(mode, label, primary=False, init_timeout=cfg.init_timeout))
    except Exception as exc:  # noqa: BLE001 - a node's system metrics never stop training
        print(f"tracking: {label} could not join W&B run {run_id} ({type(exc).__name__}: {exc}); "
              "its system metrics are not recorded", file=sys.stderr, flush=True)
        return NullTracker()
    return WandbTracker(run, mode)
