"""Every path inside a run directory, named once.

    run.json           the run's identity: what its checkpoints mean (see identity.py)
    .lock              held (flock) by the one `launcher run` working in this directory
    recipe.yaml        the resolved recipe (overrides applied), what every worker reads
    plan.json          the launch plan (secrets redacted)
    environment.json   host, versions, git sha, environment (secrets redacted)
    tracking.json      the tracker's run id, one per run directory
    metrics.jsonl      one JSON object per logged step (rank 0)
    progress.json      rank 0's step, rewritten at most once a second (the terminal's live bar)
    sweep.json         `launcher sweep`: each point's values and status (a sweep's directory)
    tensorboard/       TensorBoard event files (tracking.backends: [tensorboard])
    report.png         `launcher report`: the run's curves
    samples.jsonl      generated samples (language models)
    logs/              torchrun/ (per-attempt, per-rank logs), ranks/ (where each rank runs),
                       nodes/ (torchrun agents' own errors), failure.json (the failure summary),
                       nccl-trace/ (NCCL flight recorder)
    checkpoints/       committed checkpoints and the `latest` pointer (or checkpoint.dir)
    export/            the final model in its own format
    profile/           torch.profiler output (train.profile_steps)
    slurm/             job.sbatch, jobs.json, requeues.json, the job's output
    task-N/            a Slurm sweep's array task N (a run directory of its own)
    .secrets.json      secrets for remote nodes (0600), only while a hostfile job runs
Recipe modules add their own outputs beside these (tokenizer/, confusion/, samples of their own).

Standard library only: the worker and the node guard import it before anything heavy.
"""

from __future__ import annotations

import re
from pathlib import Path

# Without run.json, a directory is a run's only when it is empty but for these (a claim that was
# interrupted), or when it is a run directory of a launcher from before run.json (LEGACY_FILES).
CLAIMABLE_NAMES = frozenset({".lock", "run.json.tmp"})
LEGACY_FILES = ("recipe.yaml", "plan.json", "environment.json")
SWEEP_TASK = re.compile(r"task-(\d+)")  # a sweep's array task i runs in RUN_DIR/task-<i>
SWEEP_RECORD = "sweep.json"  # `launcher sweep`: each point's values and status


class RunDir:
    """The paths of one run directory. Pure: nothing is created or read here."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def identity(self) -> Path:
        return self.root / "run.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def tracking(self) -> Path:
        return self.root / "tracking.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def progress(self) -> Path:
        """Rank 0's current step, rewritten at most once a second (the terminal's live bar)."""
        return self.root / "progress.json"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def torchrun_logs(self) -> Path:
        return self.logs / "torchrun"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def report(self) -> Path:
        return self.root / "report.png"

    @property
    def rank_records(self) -> Path:
        return self.logs / "ranks"

    @property
    def heartbeats(self) -> Path:
        """Each rank's step and phase, mapped into memory (runtime/heartbeat.py): the hang watch."""
        return self.logs / "heartbeat"

    @property
    def hang(self) -> Path:
        """A hang's evidence: the watch's request, each node's stacks and process states."""
        return self.logs / "hang"

    @property
    def agent_errors(self) -> Path:
        return self.logs / "nodes"

    @property
    def failure(self) -> Path:
        return self.logs / "failure.json"

    @property
    def nccl_trace(self) -> Path:
        return self.logs / "nccl-trace"

    def checkpoints(self, configured: str = "") -> Path:
        """checkpoint.dir when the recipe sets one, else checkpoints/ in the run directory."""
        return Path(configured) if configured else self.root / "checkpoints"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def profile(self) -> Path:
        return self.root / "profile"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def sbatch(self) -> Path:
        return self.slurm / "job.sbatch"

    @property
    def jobs(self) -> Path:
        return self.slurm / "jobs.json"

    @property
    def requeues(self) -> Path:
        return self.slurm / "requeues.json"

    @property
    def secrets(self) -> Path:
        return self.root / ".secrets.json"

    def sweep_task(self, index: int) -> RunDir:
        return RunDir(self.root / f"task-{index}")


def is_legacy_run_dir(root: Path) -> bool:
    """A run directory written before run.json existed: its resolved recipe says what it is."""
    return not (root / "run.json").exists() and all((root / name).is_file() for name in LEGACY_FILES)


def foreign_entries(root: Path) -> list[str]:
    """Entries of an existing directory that make it the user's, not a run's (sorted); [] when the
    launcher may use it: missing, empty, a run directory, or a run directory from before run.json."""
    try:
        names = sorted(entry.name for entry in root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    if "run.json" in names or is_legacy_run_dir(root):
        return []
    return [name for name in names if name not in CLAIMABLE_NAMES]
