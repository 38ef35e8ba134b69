"""`launcher run RECIPE`: check and lock the run directory, write it, run the plan on its engine,
report how it ended.

    run(...)        the command: plan (exit 2 on bad input), claim, start, wait; exit = the job's
    start_run(...)  pre-flight, the run records, the job on its engine, its exit status

Everything the user can fix is raised before anything starts or is written (RecipeError,
RunDirError, CheckpointError, PreflightFailed); the command turns these into exit status 2.
"""

from __future__ import annotations

import os
import sys

import click

from launcher.cli.common import (
    ALLOW_HELP,
    OVERRIDES_HELP,
    STARTED_AT,
    claim_run,
    prepare_or_fail,
    refuse_if_it_does_not_fit,
    refusing,
    resume_sentence,
    say,
    with_placement,
)


@click.command(epilog=OVERRIDES_HELP)
@with_placement
@click.option("--no-preflight", is_flag=True, help="Skip the ssh/port checks of hostfile hosts.")
@click.option("--allow-schedule-change", is_flag=True, help=ALLOW_HELP)
@click.option("--device-memory", metavar="SIZE", help="Memory of one rank's device, e.g. 80GiB (default: the GPU's "
                                                      "size from nvidia-smi; without a GPU, this machine's memory "
                                                      "/ processes per node). A job predicted not to fit is "
                                                      "refused (exit 2) with what would.")
@click.option("--no-memory-check", is_flag=True, help="Start even when the memory estimate says it will not fit.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show third-party notices the console holds back (LAUNCHER_VERBOSE=1; always in the rank logs).")
def run(recipe_path, overrides, no_preflight, allow_schedule_change, verbose, device_memory, no_memory_check,
        **placement):
    """Write the run directory, then start the job and wait for it (exit status = the job's).

    \b
    One node: torchrun. --hostfile: one torchrun per host over pdsh (or ssh).
    Inside a Slurm allocation (salloc/sbatch): one torchrun per node with srun.
    A run directory belongs to one experiment and one launcher at a time (run.json, .lock).
    """
    from launcher.plan.deepspeed import check_before_start

    if verbose:
        os.environ["LAUNCHER_VERBOSE"] = "1"  # every rank's environment, on every engine (LAUNCHER_*)
    loaded, launch_plan, resolved = prepare_or_fail(recipe_path, overrides, placement)
    if launch_plan.node_rank:  # one node of many, not node 0: node 0's launcher owns the run directory
        sys.exit(refusing(lambda: start_node(recipe_path, loaded, launch_plan, resolved, STARTED_AT)))

    def checked_claim():
        check_before_start(recipe_path, loaded, launch_plan)
        if not no_memory_check:  # the first step's out-of-memory error, found before anything starts
            refuse_if_it_does_not_fit(recipe_path, overrides, loaded, launch_plan, device_memory)
        return claim_run(loaded, launch_plan.run_dir, resolved, recipe_path, allow_schedule_change)

    claim = refusing(checked_claim)
    try:
        status = refusing(lambda: start_run(loaded, launch_plan, resolved, claim, not no_preflight, STARTED_AT))
    finally:
        claim.release()
    sys.exit(status)


def start_run(loaded, launch_plan, resolved: dict, claim, preflight: bool, started_at: float) -> int:
    """Run the job in the claimed run directory; its exit status."""
    from launcher.engines.commands import HostProblem, PreflightFailed, local_interface_problems
    from launcher.engines.group import STOP_STATUSES
    from launcher.engines.process import execute
    from launcher.engines.registry import engine_named
    from launcher.plan.launch import rendezvous_port_taken
    from launcher.rundir import RunDir
    from launcher.rundir.record import tracker_run_id, write_run_dir

    engine = engine_named(launch_plan.engine)
    taken = rendezvous_port_taken(launch_plan)
    if taken:  # another store there would take this job's nodes in: the jobs would mix
        raise PreflightFailed([HostProblem(taken.rsplit(":", 1)[0], f"the rendezvous port {taken} is in use "
                                           "(another job's rendezvous store?): two jobs on one port join one "
                                           "rendezvous, and the first to end stops the other",
                                           "give this job another cluster.master_port, or leave it unset (each "
                                           "run directory then gets its own)")])
    problems = engine.preflight(launch_plan, sys.executable, os.getcwd()) if preflight else []
    if engine.standalone or launch_plan.node_rank is not None:  # this machine's ranks bind it: checked always
        problems += local_interface_problems(loaded.recipe.cluster.network_interface)
    if problems:
        raise PreflightFailed(problems)
    for change in claim.changes:
        say(f"continuing with a changed schedule: {change.render()}")
    resume = resume_sentence(loaded, launch_plan)  # before the claim's record: the run dir as it was
    claim.commit()
    write_run_dir(RunDir(launch_plan.run_dir), resolved, launch_plan.to_dict())
    tracker_run_id(RunDir(launch_plan.run_dir))  # one tracker run per job, made before any rank starts
    math = launch_plan.math
    say(f"run dir {launch_plan.run_dir}")
    say(f"{launch_plan.engine}, {launch_plan.layout}; "
        f"global batch {math.global_batch} = {math.micro} x {math.accumulation} x {math.world_size}; "
        f"{math.optimizer_steps} steps")
    if resume:
        say(resume)
    cluster = loaded.recipe.cluster
    secrets = {name: cluster.env.get(name, os.environ.get(name, "")) for name in launch_plan.secret_names}
    monitor = _hang_monitor(loaded, launch_plan)
    status = execute(launch_plan, secrets, started_at=started_at, keep_fds=(claim.lock_fd,), monitor=monitor)
    if status in STOP_STATUSES:  # a requested stop (Slurm's preemption signal: a requeue)
        status = engine.after_stop(launch_plan, status, cluster.timeout_requeues)
    elif monitor is not None and monitor.lines:  # a hang: the verdict ends the output
        say("\n".join(monitor.lines).replace("\n", "\nlauncher: "))
    elif status != 0:
        report_failure(launch_plan.run_dir, status, cluster.max_restarts, loaded.recipe.tracking)
        _storage_after_failure(RunDir(launch_plan.run_dir).checkpoints(loaded.recipe.checkpoint.dir))
    else:  # success is every rank's finished run, not an engine's exit status
        status = _finished_or_failed(launch_plan.run_dir)
    say(f"job finished with exit status {status}")
    return status


def _hang_monitor(loaded, launch_plan):
    """The hang watch for this job (engines/hang_watch.py), or None when cluster.hang_watch is off."""
    from launcher.engines.hang_watch import HangMonitor, HangSettings

    cluster = loaded.recipe.cluster
    settings = HangSettings.of(cluster)
    if settings is None:
        return None
    return HangMonitor(launch_plan.run_dir, launch_plan.math.world_size, len(launch_plan.procs_by_node), settings,
                       cluster.collective_timeout, loaded.recipe.tracking)


def _storage_after_failure(root) -> None:
    """A save the failure cut short leaves a .tmp-step-* directory: the job is over, so it goes (the
    last committed checkpoint is untouched); and when the disk is (nearly) full, that is said, with
    the space a checkpoint takes, as the likely cause."""
    import shutil

    from launcher.rundir.checkpoints import committed_steps

    stale = sorted(root.glob(".tmp-step-*")) if root.is_dir() else []
    for directory in stale:
        shutil.rmtree(directory, ignore_errors=True)
    committed = committed_steps(root) if root.is_dir() else []
    if stale:
        kept = f"{committed[-1][1].name} is intact" if committed else "there is no earlier checkpoint"
        say(f"a checkpoint was being written when the job failed ({', '.join(d.name for d in stale)}, removed); "
            f"{kept}")
    try:
        usage = shutil.disk_usage(root if root.is_dir() else root.parent)
    except OSError:
        return
    last = sum(p.stat().st_size for p in committed[-1][1].rglob("*") if p.is_file()) if committed else 0
    if usage.free < max(2 * last, 64 << 20, usage.total // 100):
        say(f"{root} has {usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"
            + (f", and a checkpoint of this run takes {last / 2**20:.1f} MiB" if last else "")
            + ": a full disk is the likely cause. Free space (or set checkpoint.dir on a larger file system), "
            "then run the same command to resume")


def _finished_or_failed(run_dir: str) -> int:
    from launcher.engines import failure

    reason = failure.unfinished(run_dir)
    if not reason:
        return 0
    say(reason.replace("\n", "\nlauncher: "))
    return 1


def start_node(recipe_path: str, loaded, launch_plan, resolved: dict, started_at: float) -> int:
    """This machine's node of a job started node by node (--node-rank R > 0, or an srun task): node
    0's launcher claims and writes the run directory; this one waits until it has, with the very
    recipe this node was given, then runs its own torchrun, which meets node 0's."""
    import socket

    from launcher.engines.commands import HostProblem, PreflightFailed, local_interface_problems
    from launcher.engines.process import execute
    from launcher.plan.deepspeed import check_before_start
    from launcher.rundir.record import await_run_dir

    check_before_start(recipe_path, loaded, launch_plan)
    interfaces = local_interface_problems(loaded.recipe.cluster.network_interface)
    if interfaces:
        raise PreflightFailed(interfaces)
    problem = await_run_dir(launch_plan.run_dir, resolved, loaded.recipe.cluster.rdzv_timeout)
    if problem:
        raise PreflightFailed([HostProblem(socket.gethostname(), *problem)])
    say(f"node {launch_plan.node_rank} of {len(launch_plan.procs_by_node)}, run dir {launch_plan.run_dir}; "
        f"rendezvous {launch_plan.rendezvous}")
    status = execute(launch_plan, {}, started_at=started_at)
    say(f"node {launch_plan.node_rank} finished with exit status {status}")
    return status


def report_failure(run_dir: str, status: int, max_restarts: int, tracking=None) -> None:
    from launcher.engines import failure

    found = failure.summarize(run_dir, status)
    if found is None:
        say("the job failed before any rank started; see the output above")
        return
    summary = failure.render(found, max_restarts)
    try:
        if tracking is not None:
            # Before failure.json (`launcher status` reads a failure newer than the metrics as how the
            # run ended) and before the summary (which stays the console's last lines).
            failure.send_alert(run_dir, tracking, summary, status)
        failure.write(run_dir, found)
    except OSError as error:  # a full disk is often why the job failed: the summary still gets out
        say(f"could not record the failure in {run_dir} ({error.strerror or error})")
    say(summary.replace("\n", "\nlauncher: "))
