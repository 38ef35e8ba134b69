"""When a job finally fails: which rank failed first, where, how, and the end of its log.

torchrun prints its own root-cause table, but it scrolls by among every rank's output and does not
show the log. Each rank records where it runs (logs/ranks/rank-N.json: host, attempt, its torchrun
log directory); torchrun's error file there (written by `record`) carries the exception. The
summary picks the earliest failure of the last attempt, is printed by the launcher and kept in
logs/failure.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.rundir.layout import RunDir

TAIL_LINES = 15
# faulthandler's stall dump (launcher.runtime.stuck): a "Timeout (h:mm:ss)!" line, then one block
# per thread: a header, then frames, innermost first.
_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+) \(most recent call first\):$")
_FRAME = re.compile(r'^  File "(.*)", line (\d+) in (.*)$')


@dataclass(frozen=True)
class Failure:
    rank: int
    host: str
    local_rank: int
    attempt: int
    attempts: int
    exit: str
    message: str
    log: str
    tail: list[str]
    stalls: tuple[str, ...] = ()  # per rank: where its step stood when it stalled (a stuck collective)


def summarize(run_dir: str, exit_status: int) -> Failure | None:
    ranks = rank_records(Path(run_dir))
    if not ranks:
        return None
    last_attempt = max(r["attempt"] for r in ranks)
    current = [r for r in ranks if r["attempt"] == last_attempt]
    candidates = []
    for record in current:
        error = _error_file(record)
        stamp = error["written_at"] if error else float("inf")
        candidates.append((0 if error else 1, stamp, record["rank"], record, error))
    _, _, _, record, error = min(candidates, key=lambda c: c[:3])
    stderr = Path(record.get("log_dir", "")) / "stderr.log"
    tail = _tail(stderr)
    if error:
        exit_text, message = "1 (Python exception)", error["message"]
    else:
        exit_text = f"{exit_status} (no error file: killed by a signal or a crash outside Python)"
        message = next((line for line in reversed(tail) if line.strip()), "")
    return Failure(record["rank"], record["host"], record["local_rank"], last_attempt, last_attempt + 1,
                   exit_text, message, str(stderr), tail, _stalls(current))


def render(failure: Failure, max_restarts: int) -> str:
    lines = [f"job failed after {failure.attempts} attempt(s) (cluster.max_restarts={max_restarts})",
             f"first failure: rank {failure.rank} (local rank {failure.local_rank}) on host {failure.host}, "
             f"attempt {failure.attempt}, exit code {failure.exit}",
             f"  {failure.message.splitlines()[0] if failure.message else '(no message)'}",
             f"last lines of {failure.log}:"]
    lines += [f"  | {line}" for line in failure.tail]
    if failure.stalls:
        # Under NCCL the "first failure" is often a healthy rank its watchdog ended; the stacks
        # say which rank was stuck elsewhere and which waited in a collective.
        lines.append("steps that stalled (each rank's Python stack at 90% of cluster.collective_timeout):")
        lines += [f"  {line}" for line in failure.stalls]
    return "\n".join(lines)


def stall_frames(log_text: str, thread_id: int | None) -> list[tuple[str, int, str]]:
    """(file, line, function) of the thread `thread_id` (else the last thread listed, which is
    the main thread in CPython's order) in the log's last stall dump, innermost first."""
    lines = log_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Timeout (") and line.endswith(")!")]
    if not starts:
        return []
    blocks: dict[int, list[tuple[str, int, str]]] = {}
    current: list[tuple[str, int, str]] | None = None
    for line in lines[starts[-1] + 1:]:
        thread = _THREAD.match(line)
        frame = _FRAME.match(line)
        if thread:
            current = blocks.setdefault(int(thread.group(1), 16), [])
        elif frame and current is not None:
            current.append((frame.group(1), int(frame.group(2)), frame.group(3)))
        elif current is not None and not line.startswith(" "):
            break  # the dump ended: the rank's own output goes on
    if not blocks:
        return []
    return blocks.get(thread_id or -1) or list(blocks.values())[-1]


def describe_stall(frames: list[tuple[str, int, str]]) -> str:
    """The innermost frame, and the innermost one outside libraries when that is another."""
    def where(frame: tuple[str, int, str]) -> str:
        path = frame[0].split("site-packages/")[-1]
        return f"{path}:{frame[1]} in {frame[2]}"

    own = next((f for f in frames if "site-packages" not in f[0] and not f[0].startswith("<")), None)
    text = where(frames[0])
    return text if own in (None, frames[0]) else f"{text} (from {where(own)})"


def write(run_dir: str, failure: Failure) -> None:
    """logs/failure.json, whole or not at all (OSError when it cannot be written: a full disk)."""
    path = RunDir(run_dir).failure
    partial = path.with_name(path.name + ".tmp")
    try:
        partial.write_text(json.dumps(asdict(failure), indent=2) + "\n", encoding="utf-8")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


ALERT_TEXT_LINES = 6  # the alert carries the summary's first lines


def send_alert(run_dir: str, tracking, summary: str, status: int) -> None:
    """The failure alert (tracking.alerts lists `failure`): an `alert` record in metrics.jsonl, and,
    when W&B is on, wandb's own alert in the job's run. W&B is reached from a short-lived process
    (launcher.tracking.alerts), bounded by its init timeout: the launcher imports no tracker, and a
    W&B outage cannot hold the end of a failed job."""
    if "failure" not in tracking.alerts:
        return
    run = RunDir(run_dir)
    title = f"{Path(run_dir).name}: failed with exit status {status}"
    text = "\n".join(summary.splitlines()[:ALERT_TEXT_LINES])
    if run.metrics.exists():  # a run that failed before its first step has no metrics: W&B still hears of it
        record = {"step": _last_logged_step(run.metrics),
                  "alert": {"kind": "failure", "level": "ERROR", "title": title, "text": text}}
        try:
            with open(run.metrics, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError:
            pass
    if not tracking.uses_wandb:
        return
    import subprocess
    import sys

    alert = json.dumps({"run_dir": run_dir, "title": title, "text": text, "status": status})
    try:
        subprocess.run([sys.executable, "-m", "launcher.tracking.alerts"], input=alert, text=True, check=False,
                       timeout=tracking.init_timeout + 120)
    except subprocess.TimeoutExpired:
        print("launcher: the failure alert did not reach W&B in time; metrics.jsonl has it", file=sys.stderr,
              flush=True)


def _last_logged_step(metrics: Path) -> int:
    try:
        lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            continue
    return 0


def _stalls(records: list[dict]) -> tuple[str, ...]:
    out = []
    for record in sorted(records, key=lambda r: r["rank"]):
        try:
            text = (Path(record.get("log_dir", "")) / "stderr.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        frames = stall_frames(text, record.get("main_thread"))
        if frames:
            out.append(f"rank {record['rank']}: {describe_stall(frames)}")
    return tuple(out)


def unfinished(run_dir: str) -> str:
    """Why a job whose engine exited 0 did not finish ("" when it did): rank 0 records `finished`
    once it is past the last barrier of the job, after every rank's last step. An engine that ran
    nothing (a remote shell that runs no command, and exits 0) leaves no rank record at all."""
    ranks = rank_records(Path(run_dir))
    if not ranks:
        return (f"the engine exited 0, but no rank of the job ever started (no record in "
                f"{RunDir(run_dir).rank_records}): nothing was trained\n      HINT: check that the hosts run the "
                "launcher's commands (its remote shell, pdsh or ssh, must run a command there); without "
                "--no-preflight, the launcher checks them first")
    first = [r for r in ranks if r.get("rank") == 0]
    if first and first[0].get("finished"):
        return ""
    return (f"the engine exited 0, but rank 0 never reported the end of the job (its record in "
            f"{RunDir(run_dir).rank_records}): the job did not finish\n      HINT: see the ranks' logs "
            f"(`launcher logs {run_dir}`)")


def rank_records(run_dir: Path) -> list[dict]:
    """The readable rank records of the run's current job, by rank."""
    records = []
    for path in sorted(RunDir(run_dir).rank_records.glob("rank-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _error_file(record: dict) -> dict | None:
    path = Path(record.get("log_dir", "")) / "error.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["message"]
        # The file's own modification time orders failures, not its "timestamp": torchrun writes
        # whole seconds there, and a peer that fails because this rank died usually fails within
        # the same second; a tie would then name the lowest rank, not the one that failed first.
        written = path.stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(data, dict):
        data = data.get("message", "")
    return {"message": str(data), "written_at": written}


def _tail(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return lines[-TAIL_LINES:]
