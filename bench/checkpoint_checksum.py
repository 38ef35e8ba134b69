"""What the checkpoint checksums cost: a 100 MB checkpoint committed through the real protocol
(torch.save of a model's state, fsync, manifest, rename, pointer), with the xxh3-128 checksums
streamed while writing against the same save with sizes only (the manifest before checksums).

    python bench/checkpoint_checksum.py                 # 100 MB, 9 saves of each, alternated
    python bench/checkpoint_checksum.py --mb 500 --runs 5

Saves alternate A B A B on the same machine so drift hits both; the figure to quote is the ratio
of the medians. Writes bench/results/checkpoint-checksum-<host>-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sizes_only(tmp: Path) -> dict:
    """The manifest as it was before checksums: every file's size (the save then writes past the
    hashing writer, with plain torch.save)."""
    for part in tmp.glob(".digests-rank*.json"):
        part.unlink()
    return {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="checkpoint size in MB (float32 weights)")
    parser.add_argument("--runs", type=int, default=9, help="saves of each variant")
    parser.add_argument("--dir", default="", help="where to write (default: a temporary directory)")
    args = parser.parse_args()

    import torch

    from launcher.runtime import checkpoint as ckpt

    torch.set_num_threads(1)
    state = {f"layer{i}.weight": torch.randn(args.mb * 2**20 // 4 // 8) for i in range(8)}
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    real_manifest = ckpt._manifest_files

    def hashed(files) -> None:
        files.save(state, "model.pt")

    def plain(files) -> None:
        torch.save(state, files.path("model.pt"))

    def save(variant: str, index: int) -> float:
        root = workdir / f"{variant}-{index}"
        manager = ckpt.CheckpointManager(str(root), keep_last=1, rank=0, barrier=lambda: None)
        ckpt._manifest_files = real_manifest if variant == "checksum" else sizes_only
        started = time.perf_counter()
        committed = manager.save(1, {"step": 1}, hashed if variant == "checksum" else plain)
        elapsed = time.perf_counter() - started
        size = sum(p.stat().st_size for p in committed.rglob("*") if p.is_file())
        shutil.rmtree(root)
        assert size > args.mb * 2**20 * 0.99
        return elapsed

    save("sizes", -1), save("checksum", -1)  # warm-up: allocator, page cache, imports
    times: dict[str, list[float]] = {"sizes": [], "checksum": []}
    for index in range(args.runs):
        for variant in ("sizes", "checksum") if index % 2 == 0 else ("checksum", "sizes"):
            times[variant].append(save(variant, index))
    if not args.dir:
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "bench": "checkpoint_checksum", "checkpoint_mb": args.mb, "runs": args.runs,
        "save_s_sizes_only": medians["sizes"], "save_s_with_checksums": medians["checksum"],
        "overhead": medians["checksum"] / medians["sizes"] - 1,
        "save_s_all": times, "host": platform.node(), "cpu_count": os.cpu_count(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"checkpoint-checksum-cpu-{stamp}.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{args.mb} MB checkpoint, median of {args.runs} saves each: sizes only {medians['sizes']:.3f} s, "
          f"with checksums {medians['checksum']:.3f} s: {result['overhead']:+.1%}  ({out.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
