"""Entry point of every training process: `python -m launcher.runtime.worker --run-dir DIR`.

torchrun starts it (on every node, under srun or pdsh too): as a fresh interpreter, or with
cluster.start_method=fork forked from its agent and run as a file (`--run-path`). Rank and world
come from the engine's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time


def main(argv: list[str] | None = None) -> int:
    # Before the heavy imports: the startup report splits launch time at this point.
    os.environ["LAUNCHER_WORKER_START_TIME"] = repr(time.time())
    torch_preloaded = "torch" in sys.modules  # forked from torchrun's agent (cluster.start_method=fork)
    # Rank output goes to log files (and torchrun's prefixed tee): tqdm bars there are a line of
    # carriage returns per save. huggingface_hub reads this when transformers first imports it.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _default_signal_handlers()
    if torch_preloaded:
        _own_process_name()
    parser = argparse.ArgumentParser(prog="launcher.runtime.worker")
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)

    from launcher.config.load import load_recipe
    from launcher.rundir.layout import RunDir
    from launcher.rundir.record import recipe_changed
    from launcher.runtime.dist import from_environment

    env = from_environment()
    _record_rank(args.run_dir, env, forked=_forked(), torch_preloaded=torch_preloaded)
    changed = recipe_changed(RunDir(args.run_dir))
    if changed:  # each start checks, a restart by torchrun too: never train from an edited recipe
        return _refuse_start(changed, env)
    loaded = load_recipe(RunDir(args.run_dir).recipe)
    status = _run_rank(loaded, args.run_dir, env)
    if status == 0 and env.rank == 0:  # past the last barrier: every rank finished its part
        _record_rank(args.run_dir, env, forked=_forked(), torch_preloaded=torch_preloaded, finished=True)
    return status


def _context_of_type(error: BaseException, kind: type) -> BaseException | None:
    """The exception of `kind` that `error` was raised while handling, however deep."""
    seen = 0
    while error is not None and seen < 16:
        if isinstance(error, kind):
            return error
        error, seen = error.__context__, seen + 1
    return None


def _checkpoint_failed(error: Exception, env) -> int:
    _write_error_file(f"checkpoint error: {error}")  # first: on a full disk, stderr (a file) may fail too
    _to_stderr(f"rank {env.rank}: checkpoint error: {error}")
    return 3


def _refuse_start(message: str, env) -> int:
    """A rank that must not train: its reason on stderr and in torchrun's error file, exit status 2."""
    _write_error_file(message)
    _to_stderr(f"rank {env.rank}: {message}")
    return 2


def _to_stderr(text: str) -> None:
    with contextlib.suppress(OSError):  # the rank's log file, on a full disk
        print(text, file=sys.stderr, flush=True)


def _write_error_file(message: str) -> None:
    """A failure we can name, without a traceback, in torchrun's error file (its ErrorHandler's format):
    the launcher's failure summary names the rank that wrote it first, and its message."""
    import json

    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE", "")
    if not error_file:
        return
    partial = error_file + ".tmp"
    try:  # whole or not at all: torchrun's agent cannot parse half a file
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump({"message": {"message": message, "extraInfo": {"py_callstack": "",
                                                                     "timestamp": str(int(time.time()))}}}, handle)
        os.replace(partial, error_file)
    except OSError:  # the log directory's disk is full too; torch's own record() may have left an
        for path in (partial, error_file):  # empty file there, which its agent cannot parse
            with contextlib.suppress(OSError):
                os.unlink(path)


def _run_rank(loaded, run_dir: str, env) -> int:
    """This rank's part of the job, from the process group to the last barrier; its exit status."""
    from torch.distributed.elastic.multiprocessing.errors import record

    from launcher.rundir.checkpoints import CheckpointError
    from launcher.runtime import stuck
    from launcher.runtime.nonfinite import NonFinite
    from launcher.runtime.trainer import Stopped

    timeout_s = loaded.recipe.cluster.collective_timeout
    clean = False  # a failing rank skips the final barrier: it could wait forever on a stuck peer
    group_ready = False
    try:
        stuck.init_process_group(env, timeout_s, run_dir)
        group_ready = True
        # record(): torchrun's failure summary then carries the traceback, not just an exit code.
        record(_build_and_train)(loaded, run_dir, env)
        clean = True
    except CheckpointError as error:
        return _checkpoint_failed(error, env)
    except NonFinite as error:
        clean = True  # every rank stops at the same agreed step
        print(f"rank {env.rank}: {error}", file=sys.stderr, flush=True)
        return 5
    except Stopped as stopped:
        clean = True
        return 128 + stopped.signum  # the conventional status of a process ended by that signal
    except Exception as error:
        cause = _context_of_type(error, CheckpointError)
        if cause is not None:  # torch's record() could not write its file (a full disk): ours is the failure
            return _checkpoint_failed(cause, env)
        if group_ready and env.world_size > 1 and stuck.is_collective_timeout(error):
            print(stuck.describe(env, timeout_s, stuck.missing_ranks(env)), file=sys.stderr, flush=True)
            return 4  # no barrier on the way out: a peer is stuck
        _report_exception(error, run_dir, env.rank)
        return 1  # torchrun's error file (record() above) has the exception and its traceback
    finally:
        _shutdown(clean)
    return 0


def _build_and_train(loaded, run_dir: str, env) -> None:
    """Parse, build, train: the plan's batch arithmetic, the backend, the recipe's Task."""
    import torch

    from launcher.backends import make_backend
    from launcher.plan.batch import plan_math
    from launcher.quiet import quiet_third_parties
    from launcher.recipe_module import RunContext
    from launcher.rundir.layout import RunDir
    from launcher.runtime.dist import barrier
    from launcher.runtime.startup import StartupClock
    from launcher.runtime.trainer import train

    recipe = loaded.recipe
    quiet_third_parties(torch.cuda.is_available(), RunDir(run_dir).rank_records / f"rank-{env.rank}-quieted.log")
    math = plan_math(RunDir(run_dir).plan, env.world_size)
    # Same seed everywhere before the model is built: every rank starts from identical weights.
    torch.manual_seed(recipe.seed)
    startup = StartupClock()
    backend = make_backend(recipe, math, env, run_dir)
    task = loaded.recipe_module.build(recipe, RunContext(env.rank, env.local_rank, env.world_size, backend.device,
                                                  run_dir, barrier))
    startup.mark("build_s")
    train(recipe, task, backend, math, env, run_dir, startup)


def _report_exception(error: BaseException, run_dir: str, rank: int) -> None:
    """A failing rank's traceback: whole in logs/ranks/rank-N-traceback.txt, its innermost frames on
    stderr (the rank's log, and for rank 0 the console, where the launcher's summary follows)."""
    import traceback

    from launcher.quiet import verbose
    from launcher.rundir.layout import RunDir

    full = "".join(traceback.format_exception(error))
    path = RunDir(run_dir).rank_records / f"rank-{rank}-traceback.txt"
    try:
        path.write_text(full, encoding="utf-8")
    except OSError:
        verbose_text = True
    else:
        verbose_text = verbose()
    if _hang_judged(run_dir) and not verbose_text:  # the launcher is ending a hung job: its verdict speaks
        sys.stderr.write(f"stopped after the hang verdict (its traceback: {path})\n")
    elif verbose_text:
        sys.stderr.write(full)
    else:
        sys.stderr.write("".join(traceback.format_exception(error, limit=-3)) + f"(the full traceback: {path})\n")
    sys.stderr.flush()


def _hang_judged(run_dir: str) -> bool:
    """Whether the launcher's hang watch has judged this job (it asked the nodes for their stacks):
    what a rank raises while the job is ended is the hang's echo, not news."""
    from launcher.rundir.heartbeats import HANG_REQUEST
    from launcher.rundir.layout import RunDir

    return (RunDir(run_dir).hang / HANG_REQUEST).exists()


def _default_signal_handlers() -> None:
    """Forked from torchrun's agent, this process inherits the agent's handlers, which turn SIGTERM,
    SIGINT, SIGHUP and SIGQUIT into torch's SignalException. Until the trainer installs its own stop
    handlers, a signal must do what it does to any fresh Python process: end it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def _own_process_name() -> None:
    """torchrun names its agent thread `pt_elastic`, and a rank forked from it inherits the name:
    `ps`, `top` and `nvidia-smi` would list every rank as pt_elastic. Take the interpreter's name
    back, as a spawned rank has it."""
    try:
        import torch

        torch._C._set_thread_name(os.path.basename(sys.executable)[:15])  # the kernel keeps 15 bytes
    except (AttributeError, RuntimeError):  # private API: a torch without it keeps the old name
        pass


def _forked() -> bool:
    """True when torchrun forked this process from its agent (cluster.start_method=fork): it runs
    inside torch's multiprocessing wrapper, which collects its result before it exits."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def _record_rank(run_dir: str, env, **start: bool) -> None:
    """Where this rank runs and logs, for the launcher's failure summary (one small file per rank)."""
    import json
    import socket
    import threading

    from launcher.rundir.layout import RunDir

    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE", "")
    record = {"rank": env.rank, "local_rank": env.local_rank, "host": socket.gethostname(), "pid": os.getpid(),
              "attempt": env.attempt, "log_dir": os.path.dirname(error_file),
              "main_thread": threading.main_thread().ident, **start}  # finds this rank's stack in a stall dump
    if os.path.exists("/proc/self/comm"):  # the name ps/top/nvidia-smi show (Linux)
        with open("/proc/self/comm", encoding="utf-8") as handle:
            record["process_name"] = handle.read().strip()
    directory = RunDir(run_dir).rank_records
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"rank-{env.rank}.json").write_text(json.dumps(record) + "\n", encoding="utf-8")


def _shutdown(clean: bool) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if not clean:
            return
        try:
            dist.barrier()  # no rank tears the group down while a peer is still in its last collective
        except Exception:  # noqa: BLE001 - a peer already failed; destroy anyway
            pass
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # With cluster.start_method=fork, torchrun forks this process from its agent, torch already
    # imported, and runs this file as __main__ (--run-path).
    forked = _forked()
    try:
        status = main()
    except BaseException:
        if forked:  # torch's wrapper sends the traceback to the agent only; the rank's log keeps it too
            import traceback

            traceback.print_exc()
        raise
    # Our cleanup is done (tracker finished, process group destroyed, files closed). Interpreter
    # finalization occasionally aborts ("terminate called without an active exception", SIGABRT)
    # in c10d/gloo teardown on CPU, turning a finished job into a failed one (seen ~1 in 15 runs
    # of 2 ranks); leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    if forked:
        # The agent collects a forked worker's result through a queue before it exits; os._exit
        # would skip that and the agent would wait forever. torch's wrapper ends the process
        # without interpreter finalization itself.
        sys.exit(status)
    os._exit(status)
