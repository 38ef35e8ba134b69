"""torchrun's agent: torch.distributed.run's own main, with a quieter failure and, for forked
ranks, what every rank imports imported once.

    python -m launcher.runtime.agent [MODULE...] -- TORCHRUN_ARGS...

Imports: with cluster.start_method fork, torchrun's agent forks each rank from itself (torch
already imported: 1.4 s less per rank on a 2-core CPU). torch._dynamo costs as much again
(Accelerate imports it to prepare the model even without torch.compile); imported here first, it
is in every forked rank too. Only modules that initialise no CUDA belong here: a forked rank
cannot use CUDA its parent started.

Console: when a rank fails, torchrun logs the rank's traceback once more (forked ranks), then raises
ChildFailedError with a report that repeats it again: 100+ lines before the launcher's own
summary, which names the rank, host, exception and log. Here the agent says it in one line
instead, and a stop on a signal ends without torchrun's SignalException traceback. The exit
status is torchrun's (1). `launcher run --verbose` (LAUNCHER_VERBOSE=1) keeps torchrun's own.
"""

from __future__ import annotations

import importlib
import logging
import signal
import socket
import sys

# Messages torchrun's agent logs that the launcher's failure summary says better.
_REPEATS = (("torch.distributed.elastic.multiprocessing.api", "failed (exitcode"),
            ("torch.distributed.elastic.multiprocessing.errors.error_handler", "no error file defined for parent"),
            # A stop: the launcher has said which signal it got and the ranks say where they stopped.
            ("torch.distributed.elastic.agent.server.api", "Received "),
            ("torch.distributed.elastic.multiprocessing.api", "Closing process"))


def _survive_usr1() -> None:
    """Slurm delivers a step's signals to every process of the step: USR1 (preemption, time limit)
    reaches this agent too, whose default action for it is to die, leaving its ranks to stop
    alone after the job has ended. The node guard turns USR1 into SIGTERM for this agent, which
    then stops the ranks and waits for their checkpoint; so the agent itself lets USR1 pass. A
    handler, not SIG_IGN: spawned ranks start with default actions again, forked ones install
    their own."""
    signal.signal(signal.SIGUSR1, lambda *_: None)


def main(argv: list[str]) -> int:
    _survive_usr1()
    split = argv.index("--")
    if "--run-dir" in argv[split:]:  # every node's agent answers the launcher's hang watch
        from launcher.runtime.hang_dump import start_responder

        start_responder(argv[argv.index("--run-dir", split) + 1])
    for module in argv[:split]:
        importlib.import_module(module)
    from torch.distributed.run import main as torchrun

    from launcher.quiet import verbose

    if verbose():
        torchrun(argv[split + 1:])
        return 0
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    for name, start in _REPEATS:
        logging.getLogger(name).addFilter(lambda record, start=start: not record.getMessage().startswith(start))
    try:
        torchrun(argv[split + 1:])
    except ChildFailedError as error:
        host = socket.gethostname()
        for rank, failure in sorted(error.failures.items()):
            text = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
            message = str(text or "").strip().splitlines()
            print(f"torchrun: rank {rank} on {host} failed, exit code {failure.exitcode}"
                  + (f": {message[-1]}" if message else ""), file=sys.stderr, flush=True)
        return 1
    except SignalException as stop:
        print(f"torchrun: stopped on {stop.sigval.name}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
