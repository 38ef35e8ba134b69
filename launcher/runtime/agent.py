"""torchrun's agent, with what every rank imports imported once, before the agent forks the ranks.

    python -m launcher.runtime.agent MODULE... -- TORCHRUN_ARGS...

With cluster.start_method fork, torchrun's agent forks each rank from itself (torch already
imported: 1.4 s less per rank on a 2-core CPU). torch._dynamo costs as much again (Accelerate
imports it to prepare the model even without torch.compile); imported here first, it is in every
forked rank too. Nothing else changes: this is torch.distributed.run's own main, after the imports.
Only modules that initialise no CUDA belong here: a forked rank cannot use CUDA its parent started.
"""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str]) -> None:
    split = argv.index("--")
    for module in argv[:split]:
        importlib.import_module(module)
    from torch.distributed.run import main as torchrun

    torchrun(argv[split + 1:])


if __name__ == "__main__":
    main(sys.argv[1:])
