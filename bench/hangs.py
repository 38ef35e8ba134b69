"""The hang watch over repeated runs: false alarms in healthy runs with the shipped defaults, and
the time from a hang to its verdict and to the job's end for each fault on this machine.

    python bench/hangs.py                 # 10 healthy runs, then the 4 faults (about 6 minutes on 2 cores)
    python bench/hangs.py --healthy 3 --faults stop

Healthy runs: the test fixture (tests/fixtures/uneven_recipe.py) on 2 ranks, 120 steps of about
50 ms, a checkpoint every 20 steps of 0.6 s with the third 5x slower, and an evaluation every 20
steps of 1 s (twenty steps' time), under the default deadline settings: any verdict is a false
alarm. Faults: rank 1 stopped, asleep, waiting on a spinning data-loader worker, or in a mismatched
collective, with cluster.hang_floor_s=5; the verdict's own figures (seconds without progress
when judged, the deadline) and the job's wall time after its last logged step. One JSON line per
run into bench/results/hangs-<time>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.cpu import launcher_env  # noqa: E402 - the benches start launcher alike

FIXTURE = ROOT / "tests" / "fixtures" / "uneven_recipe.py"
RECIPE = f"""\
recipe: {FIXTURE}
model: {{hidden: 16, dropout: 0.0}}
data: {{samples: 96, step_delay: 0.02}}
batch: {{global: 16, micro: 4}}
train: {{steps: STEPS, log_every: 10}}
checkpoint: {{every_steps: EVERY}}
"""
FAULT_EXTRA = {"stop": [], "hang": [], "busy_worker": ["data.workers=1"], "mismatch": []}


def _run(recipe: Path, run_dir: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(run_dir), *overrides],
                          cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=900)
    return done, time.monotonic() - started


def healthy(work: Path, index: int) -> dict:
    recipe = work / "healthy.yaml"
    recipe.write_text(RECIPE.replace("STEPS", "120").replace("EVERY", "20"))
    done, seconds = _run(recipe, work / f"healthy-{index}", "data.save_delay=0.6", "data.slow_save_index=3",
                         "data.eval_delay=1", "train.eval_every=20")
    return {"section": "healthy", "run": index, "exit": done.returncode, "seconds": round(seconds, 1),
            "false_alarm": "hang at step" in done.stderr}


def fault(work: Path, name: str) -> dict:
    recipe = work / "fault.yaml"
    recipe.write_text(RECIPE.replace("STEPS", "500").replace("EVERY", "0") + "cluster: {hang_floor_s: 5}\n")
    run_dir = work / f"fault-{name}"
    done, seconds = _run(recipe, run_dir, f"data.fault={name}", "data.fault_rank=1", "data.fault_after_batches=40",
                         *FAULT_EXTRA[name])
    ended = time.time()
    lines = [line.removeprefix("launcher: ") for line in done.stderr.splitlines() if line.startswith("launcher: ")]
    start = next((i for i, line in enumerate(lines) if line.startswith("hang at step")), None)
    verdict = lines[start:-1] if start is not None else []
    words = verdict[0].split() if verdict else []
    record = {"section": "fault", "fault": name, "exit": done.returncode, "seconds": round(seconds, 1),
              "verdict_lines": len(verdict), "verdict": verdict}
    if words:
        record["no_progress_s"] = float(words[words.index("progress") + 2])
        record["deadline_s"] = float(words[words.index("deadline") + 2])
        judged = json.loads((run_dir / "logs" / "hang" / "verdict.json").read_text())
        record["verdict_after_deadline_s"] = round(judged["judged_at"] - judged["deadline_passed_at"], 1)
        record["ended_after_deadline_s"] = round(ended - judged["deadline_passed_at"], 1)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", type=int, default=10)
    parser.add_argument("--faults", nargs="*", default=list(FAULT_EXTRA))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / f"hangs-{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    common = {"time": stamp, "host": platform.node(), "cores": os.cpu_count(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="hang-bench-") as work:
        records = [healthy(Path(work), i) for i in range(args.healthy)]
        records += [fault(Path(work), name) for name in args.faults]
    with open(out, "w") as handle:
        for record in records:
            handle.write(json.dumps({**record, **common}) + "\n")
            print(json.dumps(record))
    print(f"wrote {out}")
    alarms = sum(r.get("false_alarm", False) for r in records)
    missed = [r["fault"] for r in records if r["section"] == "fault" and r["exit"] != 124]
    return 1 if alarms or missed else 0


if __name__ == "__main__":
    sys.exit(main())
