"""A hang's verdict, at most 15 lines: which rank is stuck, on which host, in which state, at which
line of which file, and which ranks wait for it in a collective. Made by the launcher from the
nodes' answers (runtime/hang_dump.py: each process's state and py-spy stacks) and the heartbeats.

What marks the stuck rank, in order: a process that is stopped or a zombie; a rank that is not in
a collective while others are (asleep in its own code, or waiting for a data-loader worker, whose
line is named then); a rank in another collective than the rest (mismatched collectives); a rank
behind the others' step.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

MAX_LINES = 15
_FRAME = re.compile(r"^\s+(?P<function>\S.*?) \((?P<file>.+?):(?P<line>\d+)\)\s*$")
_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter",
                "reduce_scatter_tensor", "broadcast", "broadcast_object_list", "barrier", "all_to_all",
                "all_to_all_single", "reduce", "gather", "scatter", "monitored_barrier", "send", "recv")
# Top-level packages whose frames are the machinery, not the line to look at (py-spy prints paths
# relative to the entry of sys.path they come from: `torch/autograd/graph.py`).
_LIBRARIES = frozenset({"torch", "deepspeed", "accelerate", "transformers", "datasets", "tokenizers", "numpy",
                        "torchvision", "safetensors", "huggingface_hub", "wandb", "tensorboard"})


@dataclass
class Frame:
    function: str
    file: str
    line: int

    def where(self) -> str:
        return f"{self.file.rsplit('/', 1)[-1]}:{self.line} in {self.function}"


@dataclass
class Process:
    pid: int
    parent: int
    host: str
    state: str
    state_text: str
    rank: int | None
    frames: list[Frame] = field(default_factory=list)  # the main thread's, innermost first

    @property
    def collective(self) -> str | None:
        """The torch.distributed call the main thread waits in, or None."""
        for frame in self.frames:
            library = "torch/distributed" in frame.file or "deepspeed/comm" in frame.file
            if library and frame.function in _COLLECTIVES:
                return frame.function
            if frame.function == "_engine_run_backward":  # DDP's and FSDP's reductions run in autograd's C++
                return "the backward pass's gradient all-reduce"
        return None

    @property
    def user_frame(self) -> Frame | None:
        """The innermost frame outside the libraries: the line a person would look at."""
        own = [f for f in self.frames if not _is_library(f.file)]
        return own[0] if own else (self.frames[0] if self.frames else None)

    @property
    def waits_for_data(self) -> bool:
        return any("torch/utils/data/" in f.file for f in self.frames[:12]) and self.collective is None


def _is_library(path: str) -> bool:
    import sys

    top = path.lstrip("/").split("/", 1)[0].removesuffix(".py")
    return path.startswith("<") or "site-packages" in path or top in _LIBRARIES or top in sys.stdlib_module_names


def main_thread(stack: str) -> list[Frame]:
    """The main thread's frames from a py-spy dump (innermost first)."""
    frames, inside = [], False
    for text in stack.splitlines():
        if text.startswith("Thread "):
            inside = '"MainThread"' in text
            continue
        match = _FRAME.match(text) if inside else None
        if match:
            frames.append(Frame(match["function"], match["file"], int(match["line"])))
    return frames


def processes(answers: list[dict], rank_of_pid: dict[int, int]) -> list[Process]:
    """Every process the nodes described; a rank's from its heartbeat's pid (a forked rank's
    /proc environment still shows the agent's), else from its environment."""
    out = []
    for answer in answers:
        for item in answer.get("processes", []):
            pid = item.get("pid", 0)
            out.append(Process(pid, item.get("parent", 0), answer.get("host", "?"), item.get("state", "?"),
                               item.get("state_text", "?"), rank_of_pid.get(pid, item.get("rank")),
                               main_thread(item.get("stack", ""))))
    return out


@dataclass
class Verdict:
    lines: list[str]
    stuck: list[tuple[int, str]]  # (rank, host) of each rank it names as stuck, "?" for a host not read


def verdict(headline: str, answers: list[dict], beats: dict[int, tuple[int, int]], evidence: str,
            ending: str) -> Verdict:
    """The verdict. beats: each rank's (step, pid) from its heartbeat."""
    steps = {rank: step for rank, (step, _) in beats.items()}
    found = processes(answers, {pid: rank for rank, (_, pid) in beats.items()})
    by_pid = {p.pid: p for p in found}
    ranks = {}
    for process in found:  # a rank is the process whose parent has no rank (its workers inherit RANK)
        parent = by_pid.get(process.parent)
        if process.rank is not None and (parent is None or parent.rank != process.rank):
            ranks[process.rank] = process
    lines = [headline]
    stuck = _stuck(ranks, steps)
    for rank in stuck[:8]:
        lines.append("  " + (_describe(ranks[rank], found) if rank in ranks else
                             f"rank {rank} is at step {steps.get(rank, '?')}, behind the others (no stack read)"))
    waiting = sorted(r for r, p in ranks.items() if r not in stuck and p.collective)
    if waiting:
        first = ranks[waiting[0]]
        where = first.user_frame.where() if first.user_frame else "?"
        many = len(waiting) > 1
        lines.append(f"  rank{'s' if many else ''} {_ranks_text(waiting)} wait{'' if many else 's'} in "
                     f"{first.collective} (from {where})")
    if not found:
        lines.append("  no node answered with its stacks (py-spy missing, or the agents gone); the heartbeats: "
                     + ", ".join(f"rank {r} at step {s}" for r, s in sorted(steps.items())[:8]))
    lines.append(f"  every process's stack and state: {evidence}")
    lines.append(ending)
    return Verdict(lines[:MAX_LINES], [(rank, ranks[rank].host if rank in ranks else "?") for rank in stuck])


def _stuck(ranks: dict[int, Process], steps: dict[int, int]) -> list[int]:
    stopped = [r for r, p in ranks.items() if p.state in ("T", "t", "Z", "X")]
    if stopped:
        return sorted(stopped)
    outside = [r for r, p in ranks.items() if p.collective is None]
    inside = [r for r, p in ranks.items() if p.collective is not None]
    if outside and inside:
        return sorted(outside)
    if inside:
        counts = Counter(ranks[r].collective for r in inside)
        if len(counts) > 1:
            usual = counts.most_common(1)[0][0]
            return sorted(r for r in inside if ranks[r].collective != usual)
    if steps:
        lowest = min(steps.values())
        behind = [r for r, s in steps.items() if s == lowest]
        if len(behind) < len(steps):
            return sorted(behind)
    return sorted(outside or ranks)


def _describe(process: Process, found: list[Process]) -> str:
    head = f"rank {process.rank} on {process.host} (pid {process.pid}) is {process.state_text}"
    if process.state in ("T", "t"):
        head += " (SIGSTOP or a debugger)"
    frame = process.user_frame
    if process.collective:
        return f"{head}, in {process.collective} where the others are in another collective: " \
               f"{frame.where() if frame else '?'} <- mismatched collectives"
    if process.waits_for_data:
        workers = [p for p in found if p.parent == process.pid and p.frames]
        busy = next((w for w in workers if w.state == "R"), workers[0] if workers else None)
        if busy and busy.user_frame:
            return (f"{head}, waiting for its data-loader worker pid {busy.pid} ({busy.state_text}): "
                    f"{busy.user_frame.where()} <- not in the collective")
    return f"{head}: {frame.where() if frame else 'no Python stack read'} <- not in the collective"


def _ranks_text(ranks: list[int]) -> str:
    if len(ranks) > 6:
        return f"{', '.join(map(str, ranks[:5]))} and {len(ranks) - 5} more"
    return ", ".join(map(str, ranks))
