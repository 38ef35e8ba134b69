"""Collective timeouts that name the rank everyone waited for (docs/faults.md 12).

The process group is created with `cluster.collective_timeout`, so a rank that is alive but never
enters a collective makes its peers' collective fail after that long instead of hanging. The
error alone says "timed out", not who: each rank whose collective timed out marks itself in the
rendezvous store, waits a moment for its peers to do the same, and the ranks without a mark are
the ones that never entered the collective (stuck, or gone).

That naming needs the timeout to arrive as a Python exception, which gloo does. NCCL's watchdog
instead tears the process down (TORCH_NCCL_ASYNC_ERROR_HANDLING=3, torch's default). So every
training step also arms a stall dump: a step still running after 90% of the collective timeout
writes every thread's Python stack into that rank's log ("Timeout (h:mm:ss)!", from the standard
library's faulthandler, which needs neither the GIL nor the main thread). The stuck rank's stack
shows where it is; its peers' show them waiting in a collective.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import sys
import time

from launcher.rundir.layout import RunDir
from launcher.runtime.dist import DistEnv

_KEY = "launcher/timed_out/"


def init_process_group(env: DistEnv, timeout_s: int, run_dir: str) -> None:
    import torch
    import torch.distributed as dist

    if env.world_size <= 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank)
        for name, value in nccl_trace_env(run_dir).items():  # read when the NCCL group is created
            os.environ.setdefault(name, value)
        os.makedirs(os.path.dirname(os.environ["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"]), exist_ok=True)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))


def nccl_trace_env(run_dir: str) -> dict[str, str]:
    """Where NCCL's flight recorder (on in torch by default: each rank's last 2000 collectives)
    dumps when the watchdog fires: the run's logs on the shared file system, not each node's /tmp.
    `torchfrtrace RUN_DIR/logs/nccl-trace -p rank_` then names the ranks a collective waited for."""
    return {"TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
            "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": os.path.join(RunDir(os.path.abspath(run_dir)).nccl_trace, "rank_")}


def is_collective_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return ("timed out" in text or "timeout" in text) and not isinstance(error, (KeyboardInterrupt, SystemExit))


def missing_ranks(env: DistEnv, wait_s: float = 5.0) -> list[int] | None:
    """Ranks that did not time out with us (None when the store cannot be reached)."""
    try:
        import torch.distributed as dist
        from torch.distributed import distributed_c10d

        if not dist.is_initialized():
            return None
        store = distributed_c10d._get_default_store()  # the rendezvous store torchrun set up
        store.set(f"{_KEY}{env.rank}", "1")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            missing = [r for r in range(env.world_size) if not store.check([f"{_KEY}{r}"])]
            if not missing:
                return []
            time.sleep(0.25)
        return missing
    except Exception:  # noqa: BLE001 - naming is best effort; the timeout itself is reported anyway
        return None


def describe(env: DistEnv, timeout_s: int, missing: list[int] | None) -> str:
    if missing is None:
        who = "the stuck rank could not be determined (rendezvous store unreachable)"
    elif missing:
        who = f"rank(s) {', '.join(map(str, missing))} never entered it (stuck or dead)"
    else:
        who = "every rank timed out in it (a network or backend problem, not one stuck rank)"
    return (f"rank {env.rank}: a collective timed out after cluster.collective_timeout={timeout_s}s; {who}. "
            "That rank's log (logs/torchrun/.../attempt_N/<local_rank>/) shows where it is: its Python "
            "stack at the stall, after 'Timeout (...)!'.")


def stall_dump_after(timeout_s: int) -> float:
    """Seconds a step may run before the stall dump: before NCCL's watchdog ends the process."""
    return max(1.0, 0.9 * timeout_s)


_armed_at: float | None = None  # when faulthandler's countdown was last (re)started


def arm_stall_dump(seconds: float) -> None:
    """Called at every step: a step that then runs on too long leaves every thread's stack in the log.

    faulthandler's countdown runs on a thread of its own that needs no GIL, so it fires even when
    the main thread hangs inside C code. Restarting it starts and joins that thread (0.1-0.9 ms),
    too much for every step, so it is restarted only once half of it has passed: a step is dumped
    after running between seconds/2 and seconds, always before the collective timeout, and a step
    costs one clock read."""
    global _armed_at
    now = time.monotonic()
    if _armed_at is not None and now - _armed_at < seconds / 2:
        return
    faulthandler.dump_traceback_later(seconds, repeat=False, file=sys.stderr, exit=False)
    _armed_at = now


def disarm_stall_dump() -> None:
    """Before evaluation and saving, which run on their own clocks, and at the end."""
    global _armed_at
    if _armed_at is not None:
        faulthandler.cancel_dump_traceback_later()
        _armed_at = None
