"""What resuming a DeepSpeed ZeRO checkpoint on another world size costs: the time to join its
shards into the whole form (step-N.full/), against the time to save that checkpoint, and the host
memory the joining takes, against the issue's bound (the largest rank's share plus the model's fp32
size). The correctness of the resumed runs is the tests' (tests/integration/test_reshard.py).

    python bench/reshard.py                   # ZeRO-1, 2, 3: 4 ranks -> 2 and -> 1, a 46M-parameter MLP
    python bench/reshard.py --hidden 1024 --stages 3 --to 2

Per stage: `launcher run` on 4 ranks saves step 2 (its checkpoint_s in metrics.jsonl; the first
save, at step 1, is the warm-up), then the same command on M ranks resumes it, the M ranks joining
the shards together (reshard_s), for each M of --to (a copy of the run directory each). Then the
joining again, by one process alone (the M=1 case, the most any process does), with its peak
resident memory (VmHWM, reset after the imports). One JSON line per stage and M into
bench/results/reshard-<time>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.cpu import launcher_env  # noqa: E402 - the benches start launcher alike

# The joining alone, in a fresh process: the peak resident memory above what the imports left.
JOIN_ALONE = r"""
import json, os, sys, time
from pathlib import Path
import torch
import launcher.backends.deepspeed_reshard as reshard
from launcher.runtime.checkpoint import CheckpointFiles

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

source, out = sys.argv[1], Path(sys.argv[2])
out.mkdir()
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak (VmHWM) starts again from the resident size now
baseline = status("VmRSS")
started = time.perf_counter()
reshard.write_full_form(source, CheckpointFiles(out))
seconds, peak = time.perf_counter() - started, status("VmHWM") - baseline
weights = torch.load(out / reshard.PART.format(kind="model", part=0, parts=1), mmap=True, weights_only=True)
print(json.dumps({"join_alone_s": seconds, "peak_bytes": peak,
                  "parameters": sum(t.numel() for t in weights.values() if t.is_floating_point())}))
"""


def _launch(argv: list[str], timeout: int = 1800) -> None:
    done = subprocess.run(argv, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")


def _records(run_dir: Path, key: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


def measure(stage: int, hidden: int, layers: int, targets: list[int], work: Path) -> list[dict]:
    saved = work / f"zero{stage}"
    overrides = [f"model.hidden={hidden}", f"model.layers={layers}", "batch.global=8", "batch.micro=1",
                 "train.steps=4", "scheduler.warmup_steps=1", "checkpoint.every_steps=1", "checkpoint.keep_last=4",
                 "train.eval_every=0", "tracking.mode=disabled", "backend.name=deepspeed",
                 f"backend.zero_stage={stage}"]
    command = ["launcher", "run", "recipes/mlp-tiny.yaml", *overrides]
    _launch([*command, "--run-dir", str(saved), "--nproc", "4", "train.stop_after_steps=2"])
    save_s = _records(saved, "checkpoint_s")[-1]["checkpoint_s"]  # step 2's: step 1's was the first (cold)
    checkpoint = saved / "checkpoints" / "step-00000002"
    alone = subprocess.run([sys.executable, "-c", JOIN_ALONE, str(checkpoint / "deepspeed"),
                            str(work / f"alone-{stage}")], cwd=ROOT, env=launcher_env(), capture_output=True, text=True,
                           timeout=1800)
    if alone.returncode:
        raise RuntimeError(alone.stderr[-3000:])
    figures = json.loads(alone.stdout.strip().splitlines()[-1])
    model_fp32 = figures["parameters"] * 4
    largest_share = max(p.stat().st_size for p in (checkpoint / "deepspeed").glob("*optim_states.pt"))
    records = []
    for world in targets:
        moved = work / f"zero{stage}-to{world}"
        shutil.copytree(saved, moved)
        started = time.perf_counter()
        _launch([*command, "--run-dir", str(moved), "--nproc", str(world), "train.stop_after_steps=1"])
        resume_wall = time.perf_counter() - started
        reshard_s = _records(moved, "reshard_s")[-1]["reshard_s"]
        shutil.rmtree(moved)
        records.append({
            "section": "reshard", "stage": stage, "from_world_size": 4, "to_world_size": world,
            "parameters": figures["parameters"],
            "checkpoint_bytes": sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()),
            "save_s": save_s, "reshard_s": reshard_s, "reshard_over_save": round(reshard_s / save_s, 3),
            "resume_wall_s": round(resume_wall, 2), "join_alone_s": round(figures["join_alone_s"], 3),
            "join_alone_peak_bytes": figures["peak_bytes"], "model_fp32_bytes": model_fp32,
            "largest_share_bytes": largest_share,
            "peak_over_bound": round(figures["peak_bytes"] / (model_fp32 + largest_share), 3),
        })
    shutil.rmtree(saved)
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--to", type=int, nargs="+", default=[2, 1], help="world sizes to resume on")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / f"reshard-{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    versions = {"python": platform.python_version(), "host": platform.node(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="reshard-bench-") as work:
        for stage in args.stages:
            for record in measure(stage, args.hidden, args.layers, args.to, Path(work)):
                record.update({"time": stamp, **versions, "command": " ".join(sys.argv)})
                with open(out, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(json.dumps(record))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
