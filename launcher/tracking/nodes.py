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

from launcher.rundir.layout import RunDir
from launcher.tracking.base import NullTracker
from launcher.tracking.wandb_tracker import (
    WandbTracker,
    node_label,
    node_settings,
    resolved_mode,
    say,
    shared_mode_available,
)


def writes_node_metrics(cfg, rank: int, local_rank: int) -> bool:
    """Whether this rank starts its node's secondary writer."""
    return cfg.system_metrics == "all_nodes" and cfg.uses_wandb and local_rank == 0 and rank != 0


def start_node_writer(cfg, run_dir: str, run_id: str, label: str = ""):
    """This node's secondary writer (a tracker whose finish() ends it), or a NullTracker."""
    label = label or node_label()
    if not shared_mode_available():
        say(f"tracking.system_metrics=all_nodes needs wandb >= 0.19.9 (shared mode); {label} is not recorded, "
            "rank 0's machine is")
        return NullTracker()
    import wandb

    mode = resolved_mode(cfg.mode)
    directory = RunDir(run_dir).root / "wandb-nodes" / label
    directory.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(project=cfg.project, entity=cfg.entity or None, id=run_id, dir=str(directory),
                         settings=node_settings(mode, label, primary=False, init_timeout=cfg.init_timeout))
    except Exception as exc:  # noqa: BLE001 - a node's system metrics never stop training
        say(f"{label} could not join W&B run {run_id} ({type(exc).__name__}: {exc}); its system metrics are not "
            "recorded")
        return NullTracker()
    return WandbTracker(run, mode)
