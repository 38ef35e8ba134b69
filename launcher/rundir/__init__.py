"""The run directory, owned here: its paths (layout), its name (naming), what its checkpoints
mean (identity), who works in it (lock, claim) and the records of what ran (record)."""

from launcher.rundir.layout import RunDir
from launcher.rundir.naming import default_run_dir, name_problem, run_name

__all__ = ["RunDir", "default_run_dir", "name_problem", "run_name"]
