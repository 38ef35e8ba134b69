"""The hang watch: the launcher reads every rank's heartbeat (rundir/heartbeats.py) once a second,
from outside the ranks, and learns the step's pace from the run. A rank whose step has not moved
for longer than its deadline is a hang: the watch asks every node's torchrun agent for the stacks
and states of its processes (runtime/hang_dump.py), names the stuck rank in a verdict of at most
15 lines (engines/hang_verdict.py), and the launcher ends the job, so the allocation is freed
instead of waiting out the collective timeout.

The deadline: nothing while a rank starts (build, restore, rendezvous) or in its first
hang_warmup_steps steps (compilation); then hang_factor x the slowest step of the last 20 polls'
pace, at least hang_floor_s. An evaluation or a save has its own: hang_factor x the longest one
seen before, or hang_phase_s for the first.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from launcher.rundir.heartbeats import (
    DONE,
    HANG_END,
    HANG_REQUEST,
    PHASES,
    STARTING,
    TRAINING,
    heartbeat_file,
    read_heartbeat,
)
from launcher.rundir.layout import RunDir
from launcher.rundir.record import write_atomic

DUMP_WAIT_S = 20.0  # how long the watch waits for the nodes' dumps before it judges without them


@dataclass(frozen=True)
class HangSettings:
    floor_s: float = 60.0
    factor: float = 10.0
    phase_s: float = 600.0
    warmup_steps: int = 3

    @classmethod
    def of(cls, cluster) -> HangSettings | None:
        if not cluster.hang_watch:
            return None
        return cls(cluster.hang_floor_s, cluster.hang_factor, cluster.hang_phase_s, cluster.hang_warmup_steps)


@dataclass
class RankSeen:
    step: int = 0
    phase: int = STARTING
    pid: int = 0
    since: float = 0.0  # when the watch saw this (step, phase) first


@dataclass
class Late:
    """The first rank past its deadline, and how the deadline was made."""

    rank: int
    seen: RankSeen
    waited_s: float
    deadline_s: float
    basis: str


@dataclass
class HangWatch:
    run_dir: Path
    world_size: int
    settings: HangSettings
    clock: object = time.monotonic
    ranks: dict[int, RankSeen] = field(default_factory=dict)
    paces: deque = field(default_factory=lambda: deque(maxlen=20))  # seconds per step, one per poll that moved
    phase_longest: dict[int, float] = field(default_factory=dict)
    _front: tuple[int, float] | None = None  # the furthest step any rank reached, and when

    def poll(self) -> Late | None:
        """Read every heartbeat; the first rank past its deadline, or None."""
        now = self.clock()
        directory = RunDir(self.run_dir).heartbeats
        for rank in range(self.world_size):
            beat = read_heartbeat(heartbeat_file(directory, rank))
            if beat is not None:
                self._see(rank, *beat, now)
        self._learn_pace(now)
        late = [self._late(rank, seen, now) for rank, seen in sorted(self.ranks.items())]
        late = [entry for entry in late if entry is not None]
        return max(late, key=lambda entry: entry.waited_s - entry.deadline_s) if late else None

    def _see(self, rank: int, step: int, phase: int, pid: int, now: float) -> None:
        seen = self.ranks.get(rank)
        if seen is None or (seen.step, seen.phase, seen.pid) != (step, phase, pid):
            if seen is not None and seen.phase not in (STARTING, TRAINING, DONE) and seen.pid == pid:
                self.phase_longest[seen.phase] = max(self.phase_longest.get(seen.phase, 0.0), now - seen.since)
            self.ranks[rank] = RankSeen(step, phase, pid, now)

    def _learn_pace(self, now: float) -> None:
        front = max((seen.step for seen in self.ranks.values()), default=0)
        if self._front is None or front < self._front[0]:  # a restart begins again
            self._front = (front, now)
            return
        moved = front - self._front[0]
        if moved > 0:
            # A move that ends past the warm-up is a pace. One that began inside it (steps faster than
            # the poll: warm-up and more seen at once) counts the warm-up too: a longer deadline for a
            # while, never a false alarm; leaving it out would leave a job that hangs right after no
            # deadline at all.
            if front > self.settings.warmup_steps:
                self.paces.append((now - self._front[1]) / moved)
            self._front = (front, now)

    def _late(self, rank: int, seen: RankSeen, now: float) -> Late | None:
        deadline, basis = self.deadline(seen)
        if deadline is None:
            return None
        waited = now - seen.since
        return Late(rank, seen, waited, deadline, basis) if waited > deadline else None

    def deadline(self, seen: RankSeen) -> tuple[float | None, str]:
        """Seconds this rank may stay where it is, and how that was made (None: no deadline)."""
        floor, factor = self.settings.floor_s, self.settings.factor
        if seen.phase in (STARTING, DONE):
            return None, ""
        if seen.phase == TRAINING:
            if seen.step <= self.settings.warmup_steps or not self.paces:
                return None, ""
            slowest = max(self.paces)
            return max(floor, factor * slowest), (f"{factor:g} x the slowest recent step, {slowest:.2f} s, "
                                                  f"at least {floor:g} s")
        longest = self.phase_longest.get(seen.phase)
        name = PHASES[seen.phase]
        if longest is None:
            phase_s = self.settings.phase_s
            return max(floor, phase_s), f"the first {name}: cluster.hang_phase_s={phase_s:g}"
        return max(floor, factor * longest), (f"{factor:g} x the longest {name} so far, {longest:.1f} s, "
                                              f"at least {floor:g} s")


def request_dumps(run_dir: Path, late: Late) -> float:
    """Ask every node's agent for its processes' stacks (runtime/hang_dump.py); the time asked."""
    directory = RunDir(run_dir).hang
    directory.mkdir(parents=True, exist_ok=True)
    asked = time.time()
    write_atomic(directory / HANG_REQUEST, json.dumps({"time": asked, "rank": late.rank, "step": late.seen.step,
                                                       "from": socket.gethostname()}))
    return asked


def end_ranks(run_dir: Path, asked: float) -> None:
    """Tell every node's agent that the hang is judged: it kills its ranks (runtime/hang_dump.py)
    while the launcher stops the job, which SIGTERM alone would not end in time."""
    try:
        write_atomic(RunDir(run_dir).hang / HANG_END, json.dumps({"time": asked}))
    except OSError:
        pass  # the collective timeout stays the last line of defence


def collect_dumps(run_dir: Path, asked: float, nodes: int, wait_s: float = DUMP_WAIT_S) -> list[dict]:
    """Each node's answer (a list of its processes), as many as came within wait_s."""
    directory = RunDir(run_dir).hang
    deadline = time.monotonic() + wait_s
    while True:
        answers = []
        for path in sorted(directory.glob("node-*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("asked") == asked:
                answers.append(data)
        if len(answers) >= nodes or time.monotonic() > deadline:
            return answers
        time.sleep(0.5)


HANG_STATUS = 124  # the job's exit status after a hang (as timeout(1)'s): never a requeue by itself
CHECK_EVERY_S = 1.0


class HangMonitor:
    """The watch as the launcher's group loop calls it (engines/group.py): check() every loop turn,
    a heartbeat read once a second; on a hang, the nodes' dumps, the verdict recorded (failure.json,
    the failure alert) and HANG_STATUS, after which the group is stopped. `lines` is the verdict, for
    the launcher to print last."""

    def __init__(self, run_dir: str, world_size: int, nodes: int, settings: HangSettings,
                 collective_timeout: int, tracking=None) -> None:
        self.watch = HangWatch(Path(run_dir), world_size, settings)
        self.run_dir, self.nodes, self.collective_timeout, self.tracking = run_dir, nodes, collective_timeout, tracking
        self.lines: list[str] = []
        self._next = 0.0

    def check(self) -> int | None:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + CHECK_EVERY_S
        late = self.watch.poll()
        return None if late is None else self._judge(late)

    def _judge(self, late: Late) -> int:
        from launcher.engines.hang_verdict import verdict

        deadline_at = time.time() - (late.waited_s - late.deadline_s)  # before the dumps are gathered
        asked = request_dumps(Path(self.run_dir), late)
        answers = collect_dumps(Path(self.run_dir), asked, self.nodes)
        beats = {rank: (seen.step, seen.pid) for rank, seen in self.watch.ranks.items()}
        headline = (f"hang at step {late.seen.step} ({PHASES[late.seen.phase]}): no progress for "
                    f"{late.waited_s:.0f} s, past the deadline of {late.deadline_s:.0f} s ({late.basis})")
        spared = max(0.0, self.collective_timeout - late.waited_s)
        ending = (f"  the job is ended now, freeing its nodes (exit status {HANG_STATUS}); the collective timeout "
                  f"({self.collective_timeout} s) would have held them {spared / 60:.0f} min more")
        judged = verdict(headline, answers, beats, str(RunDir(self.run_dir).hang), ending)
        self.lines = judged.lines
        self._record(late, deadline_at, judged.stuck[0] if judged.stuck else (late.rank, "?"))
        end_ranks(Path(self.run_dir), asked)
        return HANG_STATUS

    def _record(self, late: Late, deadline_at: float, culprit: tuple[int, str]) -> None:
        """failure.json (what `launcher status` says) and the failure alert, as a crash has them;
        logs/hang/verdict.json: the verdict, when the deadline passed and when it was judged."""
        from launcher.engines import failure

        rank, host = culprit  # the rank the verdict names, not the first whose deadline passed (its peers wait too)
        summary = "\n".join(self.lines)
        verdict_file = RunDir(self.run_dir).hang / "verdict.json"
        try:
            verdict_file.write_text(json.dumps({"lines": self.lines, "rank": rank, "host": host,
                                                "step": late.seen.step,
                                                "deadline_s": late.deadline_s, "deadline_passed_at": deadline_at,
                                                "judged_at": time.time()}, indent=1), encoding="utf-8")
        except OSError:
            pass
        record = failure.Failure(rank, host, -1, 0, 1, f"{HANG_STATUS} (hang)", self.lines[0],
                                 str(RunDir(self.run_dir).hang), self.lines[1:])
        try:
            if self.tracking is not None:
                failure.send_alert(self.run_dir, self.tracking, summary, HANG_STATUS)
            failure.write(self.run_dir, record)
        except OSError:
            pass  # the verdict still ends the output
