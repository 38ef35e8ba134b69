"""Host memory per node, predicted against the memory a real job's processes hold.

For each case: `launcher plan --memory --json` predicts the node's host memory; `launcher run`
is sampled every 0.2 s over its process tree (the launcher, torchrun's agent, the ranks, their
DataLoader workers), and the measured figure is the largest, over the samples, of the pages each
process holds alone (Private_Clean + Private_Dirty, /proc/PID/smaps_rollup) summed, plus the
shared pages of the process with the most: torch's libraries and the copy-on-write pages a
forked rank or worker still shares with its parent are the same pages in every process, and count
once, as they do in a node that runs this job alone. (PSS would split them with whatever else runs
on the machine.) One JSON line per case into bench/results/host-memory-cpu-<time>.jsonl.

    python bench/host_memory.py                 # the cases below (about 5 minutes on 2 cores)
    python bench/host_memory.py --only gpt-2x2  # one of them
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["train.eval_every=0", "train.eval_at_start=false", "checkpoint.every_steps=0", "tracking.mode=disabled",
         "scheduler.warmup_steps=0"]
CASES = {  # name: (recipe, ranks, overrides)
    "mlp-1": ("mlp-tiny", 1, ["train.steps=150"]),
    "mlp-2": ("mlp-tiny", 2, ["train.steps=150"]),
    "mlp-4": ("mlp-tiny", 4, ["train.steps=150"]),
    "mlp-2-zero2": ("mlp-tiny", 2, ["train.steps=150", "backend.name=deepspeed", "backend.zero_stage=2",
                                    'backend.deepspeed_config={"zero_optimization":{"reduce_bucket_size":500000}}']),
    "gpt-2": ("gpt-pretrain-tiny", 2, ["train.steps=40", "model.size=small"]),
    "gpt-2x2": ("gpt-pretrain-tiny", 2, ["train.steps=40", "model.size=small", "data.workers=2"]),
    "resnet-2x2": ("resnet-transfer-tiny", 2, ["train.steps=20", 'model.weights=""', "data.workers=2"]),
}


def tree(root: int) -> list[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def pages(pid: int) -> tuple[int, int]:
    """(private, shared) resident bytes of a process; (0, 0) once it is gone."""
    private = shared = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("Private_Clean", "Private_Dirty"):
                private += int(value.split()[0]) * 1024
            elif name in ("Shared_Clean", "Shared_Dirty"):
                shared += int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return private, shared


def held(pids: list[int]) -> int:
    """What the processes hold together: each one's own pages, and the shared ones once."""
    counted = [pages(pid) for pid in pids]
    return sum(private for private, _ in counted) + max((shared for _, shared in counted), default=0)


def case(name: str, work: Path) -> dict:
    recipe, ranks, overrides = CASES[name]
    overrides = [*overrides, *SHORT]
    run_dir = work / name
    common = ["--nproc", str(ranks), "--run-dir", str(run_dir)]
    plan = subprocess.run(["launcher", "plan", recipe, *overrides, *common, "--memory", "--json"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if plan.returncode != 0:
        return {"case": name, "error": plan.stderr[-800:]}
    memory = json.loads(plan.stdout)["memory"]
    row = {"case": name, "recipe": recipe, "ranks": ranks, "overrides": overrides,
           "predicted": memory["host_bytes_per_node"], "host_terms": memory["host_terms"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    job = subprocess.Popen(["launcher", "run", recipe, *overrides, *common], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    measured, ranks_seen = 0, 0
    while job.poll() is None:
        pids = tree(job.pid)
        measured = max(measured, held(pids))
        ranks_seen = max(ranks_seen, len(pids))
        time.sleep(0.2)
    if job.returncode != 0:
        return {**row, "error": f"run exit {job.returncode}: {job.stderr.read()[-800:]}"}
    row.update(measured=measured, processes=ranks_seen,
               error_pct=round(100 * (row["predicted"] - measured) / measured, 1))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or ROOT / "bench" / "results" / f"host-memory-cpu-{stamp}.jsonl")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="launcher-host-memory-") as tmp:
        for name in args.only:
            row = case(name, Path(tmp))
            failed += "error" in row
            with out.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            if "error" in row:
                print(f"{name:12} error: {row['error']}", flush=True)
            else:
                print(f"{name:12} predicted {row['predicted'] / 2**20:8.0f} MiB  measured "
                      f"{row['measured'] / 2**20:8.0f} MiB  {row['error_pct']:+6.1f}%  "
                      f"({row['processes']} processes)", flush=True)
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
