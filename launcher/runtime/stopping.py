"""Graceful stop on SIGTERM / SIGINT / SIGHUP / SIGUSR1 (Slurm's usual pre-timeout signal).

A handler only records the signal. The ranks agree on it with one tiny all-reduce per optimizer
step on a CPU (gloo) side group, so no GPU sync is added, and asynchronously: the all-reduce a
step starts is read at the next step, by which time it has long finished, so the step never
waits on it. Every rank reads the same result at the same step, so all stop after the same step
(one step after the signal reached any of them), commit one checkpoint there and exit. After a
step that evaluated or saved (the ranks have just synchronised anyway) the agreement is made at
once, so a signal that arrived during a save stops the run right after it, without a second save.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._group = None
        self._pending = None  # (work, flag) of the all-reduce started at the previous step
        self._alone: bool | None = None  # a world of one process: nobody to agree with
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum

    def agreed(self, now: bool = False) -> int | None:
        """The signal number if any rank was signalled by the previous step (collective: every rank
        calls it once per step, with the same `now`). Never waits for the network: it reads last
        step's all-reduce. With `now`, signals up to this moment count (a blocking all-reduce)."""
        import torch
        import torch.distributed as dist

        if self._alone is None:
            from launcher.runtime.dist import has_peers

            self._alone = not has_peers()
        if self._alone:
            return self.signum
        if self._group is None:
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        agreed = self.finish()
        if agreed is not None:
            return agreed
        flag = torch.tensor([self.signum or 0], dtype=torch.int64)  # a CPU tensor: no GPU sync
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return self.finish() if now else None

    def finish(self) -> int | None:
        """Wait for the all-reduce in flight, if any (before the process group goes away); its result."""
        if self._pending is None:
            return None
        work, flag = self._pending
        self._pending = None
        work.wait()
        return int(flag.item()) or None
