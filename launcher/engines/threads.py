"""OMP_NUM_THREADS for the ranks of one node: the node's cores shared out among its ranks.

torchrun sets 1 (and prints a banner saying so) when the variable is unset and a node runs more
than one rank; one thread leaves most cores idle in CPU work (data collation, CPU optimizer steps,
gloo). Like DeepSpeed's and Accelerate's launchers, the launcher owns the variable instead: the
cores this process may run on, divided by the node's ranks. A value the user set (their shell, or
`cluster.env`) always wins. Decided where the cores are known: the plan for this machine, the node
guard on every other node.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

VARIABLE = "OMP_NUM_THREADS"


def threads_per_rank(local_ranks: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))  # a Slurm step or a cgroup may allow fewer than cpu_count
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_ranks))


def with_thread_default(env: Mapping[str, str], local_ranks: int) -> dict[str, str]:
    """env, plus OMP_NUM_THREADS when nobody set it."""
    out = dict(env)
    if not out.get(VARIABLE):
        out[VARIABLE] = str(threads_per_rank(local_ranks))
    return out


def nproc_from_torchrun(argv: list[str]) -> int:
    """--nproc-per-node=N from a torchrun command line (1 when absent or not a number)."""
    for word in argv:
        if word.startswith("--nproc-per-node="):
            value = word.split("=", 1)[1]
            return int(value) if value.isdigit() else 1
    return 1
