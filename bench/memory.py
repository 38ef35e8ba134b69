"""The memory estimate against the peak a real run holds, on CPU ranks (gloo).

For each case: `launcher plan --memory --json` predicts the per-rank peak; `launcher run` with
LAUNCHER_MEMORY_TRACE measures it (launcher/runtime/live_bytes.py counts every tensor allocation
of the training steps on each rank; the largest rank's peak is taken). One JSON line per case
into bench/results/memory-cpu-<time>.jsonl, and a table on stdout.

    python bench/memory.py                                # the whole matrix (about an hour on 2 cores)
    python bench/memory.py --recipes mlp --ranks 1 2      # a part of it
    python bench/memory.py --backends ddp zero2 --micro 4

DeepSpeed's reduce and prefetch buckets are set to 5e5 elements (2 MB in fp32): with the default
5e8 the reduce bucket alone is 2 GB a rank, which the estimate counts, and which would make any
error on the model's own terms invisible in the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUCKETS = '{"zero_optimization":{"reduce_bucket_size":500000,"allgather_bucket_size":500000,' \
          '"stage3_prefetch_bucket_size":500000}}'
RECIPES = {
    "mlp": ("mlp-tiny", ["model.hidden=1024", "model.layers=4", "data.features=256"]),
    "gpt": ("gpt-pretrain-tiny", ["model.size=small"]),
    "bert": ("bert-pretrain-tiny", []),
    "resnet": ("resnet-transfer-tiny", ['model.weights=""']),
}
BACKENDS = {
    "ddp": ["backend.name=accelerate", "backend.strategy=ddp"],
    "fsdp": ["backend.name=accelerate", "backend.strategy=fsdp"],
    "zero0": ["backend.name=deepspeed", "backend.zero_stage=0"],
    "zero1": ["backend.name=deepspeed", "backend.zero_stage=1", f"backend.deepspeed_config={BUCKETS}"],
    "zero2": ["backend.name=deepspeed", "backend.zero_stage=2", f"backend.deepspeed_config={BUCKETS}"],
    "zero3": ["backend.name=deepspeed", "backend.zero_stage=3", f"backend.deepspeed_config={BUCKETS}"],
    "zero3-offload": ["backend.name=deepspeed", "backend.zero_stage=3", "backend.offload_optimizer=true",
                      "backend.offload_params=true", f"backend.deepspeed_config={BUCKETS}"],
}
ACCUMULATION = 2  # global = micro x 2 x ranks: the gradients of the first micro-step wait for the second
SHORT = ["train.steps=2", "scheduler.warmup_steps=0", "train.eval_every=0", "train.eval_at_start=false",
         "checkpoint.every_steps=0", "train.log_every=1", "tracking.mode=disabled"]


def case(recipe: str, backend: str, micro: int, ranks: int, work: Path) -> dict:
    name, extra = RECIPES[recipe]
    overrides = [*extra, *BACKENDS[backend], *SHORT, f"batch.micro={micro}",
                 f"batch.global={micro * ACCUMULATION * ranks}"]
    row: dict = {"recipe": recipe, "backend": backend, "micro": micro, "ranks": ranks,
                 "accumulation": ACCUMULATION, "overrides": overrides}
    run_dir = work / f"{recipe}-{backend}-{micro}-{ranks}"
    common = ["--nproc", str(ranks), "--run-dir", str(run_dir)]
    started = time.perf_counter()
    plan = subprocess.run(["launcher", "plan", name, *overrides, *common, "--memory", "--json"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    row["plan_s"] = round(time.perf_counter() - started, 2)
    if plan.returncode != 0:
        return {**row, "error": f"plan: {plan.stderr[-800:]}"}
    memory = json.loads(plan.stdout)["memory"]
    if "peak_bytes" not in memory:
        return {**row, "error": f"not estimated: {memory}"}
    row.update(predicted=memory["peak_bytes"], phase=memory["peak_phase"], terms=memory["terms"])
    trace = work / f"trace-{run_dir.name}"
    trace.mkdir()
    env = {**_env(), "LAUNCHER_MEMORY_TRACE": str(trace)}
    started = time.perf_counter()
    done = subprocess.run(["launcher", "run", name, *overrides, *common], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    row["run_s"] = round(time.perf_counter() - started, 2)
    peaks = [json.loads(p.read_text())["peak_bytes"] for p in trace.glob("rank-*.json")]
    if done.returncode != 0 or len(peaks) != ranks:
        return {**row, "error": f"run exit {done.returncode}: {done.stderr[-800:]}"}
    row["measured"] = max(peaks)
    row["error_pct"] = round(100 * (row["predicted"] - row["measured"]) / row["measured"], 1)
    return row


def repredict(path: Path, out: Path | None) -> int:
    """Each measured case planned again with the current arithmetic; `out` gets the new lines."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="launcher-memory-bench-") as tmp:
        for row in rows:
            if "measured" not in row:
                continue
            name = RECIPES[row["recipe"]][0]
            run_dir = Path(tmp) / "plan"
            plan = subprocess.run(["launcher", "plan", name, *row["overrides"], "--nproc", str(row["ranks"]),
                                   "--run-dir", str(run_dir), "--memory", "--json"], cwd=ROOT, capture_output=True,
                                  text=True, check=False)
            memory = json.loads(plan.stdout)["memory"]
            row.update(predicted=memory["peak_bytes"], phase=memory["peak_phase"], terms=memory["terms"])
            row["error_pct"] = round(100 * (row["predicted"] - row["measured"]) / row["measured"], 1)
            print(_line(row), flush=True)
    if out:
        out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return 0


def _env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--micro", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--out", default="")
    parser.add_argument("--repredict", metavar="JSONL", help="Only plan again each case of this file (the measured "
                                                             "peaks kept) and print the table: for changes to the "
                                                             "arithmetic; the traces are cached, so it takes seconds.")
    args = parser.parse_args()
    if args.repredict:
        return repredict(Path(args.repredict), Path(args.out) if args.out else None)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or ROOT / "bench" / "results" / f"memory-cpu-{stamp}.jsonl")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="launcher-memory-bench-") as tmp:
        for recipe in args.recipes:
            for backend in args.backends:
                for ranks in args.ranks:
                    for micro in args.micro:
                        row = case(recipe, backend, micro, ranks, Path(tmp))
                        failed += "error" in row
                        with out.open("a", encoding="utf-8") as handle:
                            handle.write(json.dumps(row) + "\n")
                        print(_line(row), flush=True)
    print(f"wrote {out}")
    return 1 if failed else 0


def _line(row: dict) -> str:
    head = f"{row['recipe']:6} {row['backend']:13} ranks {row['ranks']} micro {row['micro']:2}"
    if "error" in row:
        return f"{head}  ERROR {row['error'][:300]!r}"
    mib = 1024**2
    return (f"{head}  predicted {row['predicted'] / mib:8.1f} MiB  measured {row['measured'] / mib:8.1f} MiB  "
            f"{row['error_pct']:+6.1f}%  ({row['phase']})")


if __name__ == "__main__":
    sys.exit(main())
