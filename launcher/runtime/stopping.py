"""Graceful stop on SIGTERM / SIGINT / SIGHUP / SIGUSR1 (Slurm's usual pre-timeout signal).

A handler only records the signal. At every optimizer-step boundary the ranks agree, with one
tiny all-reduce on a CPU (gloo) side group so no GPU sync is added, on whether any of them was
signalled; if so all stop after the same step, commit one checkpoint there and exit. A signal that
arrives during a save just waits for the boundary: saves never overlap.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._group = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum

    def agreed(self) -> int | None:
        """The signal number if any rank was signalled (collective: every rank must call it)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.signum
        if self._group is None:
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item()) or None
