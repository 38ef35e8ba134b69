"""The engine's view of this process: rank and world from torchrun/srun environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    attempt: int = 0  # torchrun's restart count (cluster.max_restarts): 0 on the first attempt
    nodes: int = 1  # torchrun's agents (nodes may run different process counts)


def from_environment(env: dict[str, str] | None = None) -> DistEnv:
    env = dict(os.environ) if env is None else env
    # torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; a bare `srun python -m ...` sets SLURM_* only.
    rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    local_rank = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
    world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    local_world = int(env.get("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]))
    if not 0 <= rank < world:
        raise RuntimeError(f"rank {rank} is outside world size {world}: the engine's environment is inconsistent")
    attempt = int(env.get("TORCHELASTIC_RESTART_COUNT") or 0)
    nodes = int(env.get("GROUP_WORLD_SIZE") or env.get("SLURM_NNODES") or max(1, world // max(1, local_world)))
    return DistEnv(rank, local_rank, world, local_world, attempt, nodes)


def all_reduce_sum(tensor):
    """Summed over every rank, in place; alone, a process has its sum already (no collective)."""
    if has_peers():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_rows(tensor) -> list[list[float]]:
    """Every rank's copy of a small 1-D tensor, on the host, in rank order (alone: its own)."""
    if not has_peers():
        return [tensor.tolist()]
    import torch
    import torch.distributed as dist

    rows = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, tensor)
    return torch.stack(rows).tolist()


def gather_hosts() -> list[str]:
    """Each rank's host name, in rank order (one collective, at the start of training)."""
    import socket

    host = socket.gethostname()
    if not has_peers():
        return [host]
    import torch.distributed as dist

    hosts: list = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, host)
    return [str(h) for h in hosts]


def has_peers() -> bool:
    """A process group of more than this one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_lists(items: list[str]) -> list[str]:
    """Every rank's items, in rank order, on every rank (items as they are without a group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(items)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]
