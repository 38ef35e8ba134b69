"""Entry point of every training process: `python -m launcher.runtime.worker --run-dir DIR`.

torchrun (or srun) starts it; rank and world come from the engine's environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launcher.runtime.worker")
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)

    from torch.distributed.elastic.multiprocessing.errors import record

    from launcher.config.load import load_recipe
    from launcher.runtime.checkpoint import CheckpointError
    from launcher.runtime.dist import from_environment
    from launcher.runtime.trainer import Stopped, train

    env = from_environment()
    loaded = load_recipe(Path(args.run_dir) / "recipe.yaml")
    try:
        # record(): torchrun's failure summary then carries the traceback, not just an exit code.
        record(train)(loaded, args.run_dir, env)
    except CheckpointError as error:
        print(f"rank {env.rank}: checkpoint error: {error}", file=sys.stderr, flush=True)
        return 3
    except Stopped as stopped:
        return 128 + stopped.signum  # the conventional status of a process ended by that signal
    finally:
        _shutdown()
    return 0


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()  # no rank tears the group down while a peer is still in its last collective
        except Exception:  # noqa: BLE001 - a peer already failed; destroy anyway
            pass
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    status = main()
    # Our cleanup is done (tracker finished, process group destroyed, files closed). Interpreter
    # finalization occasionally aborts ("terminate called without an active exception", SIGABRT)
    # in c10d/gloo teardown on CPU, turning a finished job into a failed one (seen ~1 in 15 runs
    # of 2 ranks); leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
