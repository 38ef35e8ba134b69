"""When a job finally fails: which rank failed first, where, how, and the end of its log.

torchrun prints its own root-cause table, but it scrolls by among every rank's output and does not
show the log. Each rank records where it runs (logs/ranks/rank-N.json: host, attempt, its torchrun
log directory); torchrun's error file there (written by `record`) carries the exception. The
summary picks the earliest failure of the last attempt, is printed by the launcher and kept in
logs/failure.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

TAIL_LINES = 15


def rank_records_dir(run_dir: str | Path) -> Path:
    """Where each rank of the current job writes rank-N.json (stdlib only: the worker imports it early)."""
    return Path(run_dir) / "logs" / "ranks"


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


def summarize(run_dir: str, exit_status: int) -> Failure | None:
    ranks = _rank_records(Path(run_dir))
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
                   exit_text, message, str(stderr), tail)


def render(failure: Failure, max_restarts: int) -> str:
    lines = [f"job failed after {failure.attempts} attempt(s) (cluster.max_restarts={max_restarts})",
             f"first failure: rank {failure.rank} (local rank {failure.local_rank}) on host {failure.host}, "
             f"attempt {failure.attempt}, exit code {failure.exit}",
             f"  {failure.message.splitlines()[0] if failure.message else '(no message)'}",
             f"last lines of {failure.log}:"]
    lines += [f"  | {line}" for line in failure.tail]
    return "\n".join(lines)


def write(run_dir: str, failure: Failure) -> None:
    path = Path(run_dir) / "logs" / "failure.json"
    path.write_text(json.dumps(asdict(failure), indent=2) + "\n", encoding="utf-8")


def _rank_records(run_dir: Path) -> list[dict]:
    records = []
    for path in sorted(rank_records_dir(run_dir).glob("rank-*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
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
