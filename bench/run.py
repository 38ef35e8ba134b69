"""Throughput benchmark: each case through `launcher run`, and the plain hand-written loop on the
same model and batch, in one session. One JSON line per (case, mode) into bench/results/.

    python bench/run.py                      # GPU cases (one H100/H200: fits one 10-minute command)
    python bench/run.py --tiny               # CPU smoke mode (what CI runs; output schema-checked)
    python bench/run.py --cases gpt2 bert    # a subset
    python bench/run.py --profile 5          # also a torch.profiler window of 5 launcher steps per
                                             # case: profile-<case>-<time>.txt/.json next to the lines
    python bench/run.py --cpu                # the CPU proxy benchmark (bench/cpu.py): host overhead per
                                             # step, syncs, attention paths, loaders, launch; no GPU

A case that fails, or that no longer fits in --deadline, gets a line with its `error` (a failed
plain loop: its own `plain` error line, the launcher's figures kept) and the others still run (the
exit status is then 1): one broken case never costs the GPU session the rest.

Data is generated on the spot (the GPU machine has no corpora): random-word text for the language
models and JPEG files on disk for ResNet, so the ResNet case measures the real decode pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# case -> (recipe file, overrides, steps). {text} and {images} are generated data locations.
GPU_CASES = {
    "gpt2": ("recipes/gpt2-finetune.yaml", ["model.init=scratch", "model.size=gpt2", "data.corpus={text}",
                                            "data.vocab_size=50257", "batch.global=16", "batch.micro=16",
                                            "train.compile=true"], 60),
    "bert": ("recipes/bert-base-pretrain.yaml", ["data.corpus={text}", 'data.tokenizer=""', "data.vocab_size=30522",
                                                 "batch.global=256", "batch.micro=256", "data.dupe_factor=1"], 60),
    # JPEG files on disk, re-encoded once into the recipe's compact store (data.jpeg_cache: 256) by
    # the launcher run, which the plain loop then reuses; 12 loader workers of the 16 cores.
    "resnet50": ("recipes/resnet50-transfer.yaml", ['model.weights=""', "data.source={images}",
                                                    "batch.global=256", "batch.micro=256", "data.workers=12"], 60),
    "resnet18": ("recipes/resnet18-transfer.yaml", ['model.weights=""', "data.source={images}",
                                                    "batch.global=256", "batch.micro=256", "data.workers=12"], 60),
}
# The launch overhead with the ranks forked from torchrun's agent (no second torch import): the
# gpt2 case again, last, so the four cases above come first when time runs short.
GPU_CASES["gpt2-fork"] = (GPU_CASES["gpt2"][0], [*GPU_CASES["gpt2"][1], "cluster.start_method=fork"], 20)
# The resnet50 case with its JPEGs decoded by the GPU (nvJPEG, a micro-batch per call): against
# resnet50's samples_per_s, whether 12 host cores or the GPU should decode.
GPU_CASES["resnet50-nvjpeg"] = (GPU_CASES["resnet50"][0], [*GPU_CASES["resnet50"][1], "data.decode=device"], 60)
TINY_CASES = {
    "gpt-tiny": ("recipes/gpt-pretrain-tiny.yaml", ["data.corpus={text}", "batch.global=8", "batch.micro=8"], 8),
    "resnet-tiny": ("recipes/resnet-pretrain-tiny.yaml", ["data.source={images}", "data.image_size=32",
                                                          "data.decoded_cache=40",
                                                          "batch.global=16", "batch.micro=16", "data.train_limit=0",
                                                          "data.eval_limit=16"], 8),
}
COMMON = ["train.log_every=1", "train.eval_every=0", "checkpoint.every_steps=0", "scheduler.warmup_steps=1",
          "tracking.mode=disabled", "cluster.nproc_per_node=1"]
WARMUP_STEPS = 3  # excluded from throughput (compilation, allocator, caches)
GPU_DEADLINE_S = 560  # the GPU command's limit is 600 s; the rest is interpreter start and data generation
MIN_CASE_S = 45  # a case started with less time left than this could not finish: it is skipped


def generate_text(path: Path, documents: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(2000)] + ["the", "of", "and", "a", "to"] * 50
    with open(path, "w") as handle:
        for _ in range(documents):
            for _ in range(rng.randint(4, 12)):
                handle.write(" ".join(rng.choice(words) for _ in range(rng.randint(8, 30))).capitalize() + ". ")
            handle.write("\n\n")
    return path


def generate_images(root: Path, per_class: int, size: int, seed: int = 0) -> Path:
    """Noise JPEGs of size x size with a little class signal: cheap, for the training cases."""
    import numpy as np
    from PIL import Image

    def draw(rng, label: int):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        pixels[..., label % 3] //= 2  # a little class signal
        return Image.fromarray(pixels)

    return _image_tree(root, per_class, max(2, per_class // 10), draw, seed)


def generate_photos(root: Path, per_class: int, seed: int = 0) -> Path:
    """JPEGs shaped and compressed like photos (500 x 375, quality 90, ~75 KB): smooth shapes plus
    fine grain, where small noise images would say nothing about a 224-px input pipeline."""
    import numpy as np
    from PIL import Image, ImageFilter

    def draw(rng, label: int):
        coarse = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        coarse[..., label % 3] //= 2
        smooth = Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC)
        grain = np.asarray(smooth.filter(ImageFilter.GaussianBlur(1))).astype(np.int16)
        grain += rng.integers(-12, 12, grain.shape, dtype=np.int16)
        return Image.fromarray(grain.clip(0, 255).astype(np.uint8))

    return _image_tree(root, per_class, max(2, per_class // 8), draw, seed)


def _image_tree(root: Path, per_class: int, val_per_class: int, draw, seed: int) -> Path:
    """root/{train,val}/class{0..3}/N.jpg, each drawn by draw(rng, label) (quality 90)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for label in range(4):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                draw(rng, label).save(folder / f"{index}.jpg", quality=90)
    return root


def versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("torch", "deepspeed", "accelerate", "transformers", "torchvision"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def run_launcher(case: str, recipe: str, overrides: list[str], steps: int, work: Path, profile_steps: int,
                 timeout: float) -> dict:
    from launcher.runtime.profiling import profile_window

    run_dir = work / f"run-{case}"
    argv = [sys.executable, "-m", "launcher.cli", "run", recipe, "--run-dir", str(run_dir),
            "checkpoint.resume=never", f"train.steps={steps}", f"train.profile_steps={profile_steps}",
            *COMMON, *overrides]
    env = {**os.environ, "LAUNCHER_CACHE_DIR": str(work / "cache")}
    try:
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{case}: launcher run did not finish within {timeout:.0f} s (--deadline)") from None
    if result.returncode != 0:
        raise RuntimeError(f"{case}: launcher run failed\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Profiled steps run slower (the profiler's own cost): the window (its warm-up step, its
    # recorded steps) is left out of the throughput, like the warm-up steps.
    skipped, profiled = profile_window(steps, profile_steps)
    first_measured = max(WARMUP_STEPS, skipped + 1 + profiled if profiled else 0)
    train = [r for r in records if "loss" in r and r["step"] > first_measured]
    if not train:
        raise RuntimeError(f"{case}: {steps} steps leave none to measure after {first_measured} warm-up/profiled")
    startup = next((r for r in records if "launch_to_first_step_s" in r), {})
    step_time = sum(r["step_time_s"] for r in train) / len(train)
    samples_per_s = sum(r["samples_per_s"] for r in train) / len(train)
    def mean(key: str):
        values = [r[key] for r in train if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {"samples_per_s": samples_per_s, "tokens_per_s": mean("tokens_per_s"),
            "mfu": mean("mfu"), "step_time_s": step_time,
            "peak_memory_gb": max((r.get("max_memory_gb") or 0) for r in train) or None,
            "launch_to_first_step_s": startup.get("launch_to_first_step_s"),
            # The target: no more than 2 s beyond the recipe's build and the first (compiling) step.
            "launch_overhead_s": startup.get("launch_overhead_s"), "startup": startup.get("startup"),
            "backend": backend_of(run_dir), "profile": profile_of(run_dir)}


def backend_of(run_dir: Path) -> str:
    import yaml

    backend = yaml.safe_load((run_dir / "recipe.yaml").read_text())["backend"]
    if backend["name"] == "deepspeed":
        return f"deepspeed zero{backend['zero_stage']}"
    return f"{backend['name']} {backend.get('strategy', '')}".strip()


def profile_of(run_dir: Path) -> dict | None:
    """The profiler's figures (where the step time goes), without its operator table."""
    path = run_dir / "profile" / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    return {key: summary[key] for key in ("steps", "wall_s_per_step", "device_busy_s_per_step",
                                          "device_busy_fraction")}


def run_plain(recipe_path: str, overrides: list[str], steps: int, work: Path) -> dict:
    """The hand-written loop: same module, model and micro-batch; no launcher, no engine."""
    import torch

    from launcher.backends.optim import build_optimizer
    from launcher.config.load import load_recipe
    from launcher.recipe_module import RunContext
    from launcher.runtime.metrics import peak_flops

    os.environ["LAUNCHER_CACHE_DIR"] = str(work / "cache")
    if torch.cuda.is_available():
        # One process runs every case's plain loop: without this, a case would report the peak
        # memory of the largest case before it.
        torch.cuda.reset_peak_memory_stats()
    loaded = load_recipe(ROOT / recipe_path, [f"train.steps={steps}", *COMMON, *overrides])
    recipe = loaded.recipe
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    (work / "plain").mkdir(exist_ok=True)
    task = loaded.recipe_module.build(recipe, RunContext(0, 0, 1, device, str(work / "plain"), lambda: None))
    model = task.model.to(device)
    if recipe.train.compile and device.type == "cuda":
        model = torch.compile(model)
    # The recipe's optimizer kind and settings (SGD for ResNet: an AdamW plain loop would flatter the
    # launcher), one group, torch's fused kernel on CUDA.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer([{"params": trainable, "weight_decay": recipe.optimizer.weight_decay}],
                                recipe.optimizer, fused=device.type == "cuda")
    micro = recipe.batch.micro
    batches = [task.collate([task.train_data[(i * micro + j) % len(task.train_data)] for j in range(micro)])
               for i in range(4)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times = []
    for step in range(steps):
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in batches[step % len(batches)].items()}
        start = time.perf_counter()
        with autocast:
            loss_sum, count = task.loss(model, batch)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_time = sum(times[WARMUP_STEPS:]) / len(times[WARMUP_STEPS:])
    samples_per_s = micro / step_time
    peak = peak_flops(device_name() if device.type == "cuda" else None, "bf16")  # the loop's autocast dtype
    result = {"samples_per_s": samples_per_s,
              "tokens_per_s": samples_per_s * task.tokens_per_sample if task.tokens_per_sample else None,
              "mfu": samples_per_s * task.flops_per_sample / peak if peak and task.flops_per_sample else None,
              "step_time_s": step_time,
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
              "launch_to_first_step_s": None, "launch_overhead_s": None, "startup": None,
              "backend": "plain", "profile": None}
    del model, optimizer, task, batches
    release_device_memory()
    return result


def release_device_memory() -> None:
    """The next case's launcher run shares the GPU with this process: give back what the plain loop
    held (compiled graphs keep the model's weights alive until dynamo forgets them)."""
    import gc

    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def keep_profile(profile_dir: Path, out_dir: Path, stem: str) -> None:
    """The operator table and figures go next to the JSON lines; the trace stays in the work dir
    (tens of MB: open it from there in ui.perfetto.dev)."""
    for suffix in (".txt", ".json"):
        source = profile_dir / f"summary{suffix}"
        if source.exists():
            (out_dir / f"{stem}{suffix}").write_text(source.read_text())


def run_cpu_benchmark(args) -> int:
    from bench import cpu

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    meta = {"device": "cpu", "cpus": os.cpu_count(), "versions": versions(), "time": stamp}
    out_file = cpu.run_cpu(args.tiny, Path(args.out), Path(args.work) / "cpu", generate_text, generate_images,
                           generate_photos, meta, args.sections)
    problems = cpu.check_schema(out_file)
    print(f"wrote {out_file}" + "".join(f"\n  schema: {p}" for p in problems))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke mode")
    parser.add_argument("--cpu", action="store_true", help="the CPU proxy benchmark (bench/cpu.py)")
    parser.add_argument("--cases", nargs="*", help="subset of cases")
    parser.add_argument("--sections", nargs="*", help="with --cpu: only these sections (bench/cpu.py SCHEMA)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="directory for the JSON lines")
    parser.add_argument("--work", default="/tmp/launcher-bench", help="scratch directory for data and runs")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="profile this many launcher steps per case (train.profile_steps)")
    parser.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                        help=f"wall time for all cases (default {GPU_DEADLINE_S} on GPU, none with --tiny); "
                             "cases that no longer fit are recorded as skipped")
    args = parser.parse_args(argv)
    if args.cpu:
        return run_cpu_benchmark(args)
    cases = TINY_CASES if args.tiny else GPU_CASES
    chosen = args.cases or list(cases)
    unknown = [c for c in chosen if c not in cases]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(cases)}")
    deadline = args.deadline if args.deadline is not None else (None if args.tiny else GPU_DEADLINE_S)
    ends_at = time.monotonic() + deadline if deadline is not None else None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    text = generate_text(work / "text.txt", 200 if args.tiny else 20000)
    images = generate_images(work / "images", 16 if args.tiny else 1000, 40 if args.tiny else 256)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_file = out_dir / f"{'tiny' if args.tiny else 'gpu'}-{stamp}.jsonl"
    meta = {"device": device_name(), "versions": versions(), "time": stamp}
    failed = 0
    with open(out_file, "w") as handle:
        def write(record: dict) -> None:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            print(json.dumps(record), flush=True)

        for case in chosen:
            recipe, overrides, steps = cases[case]
            overrides = [o.format(text=text, images=images) for o in overrides]
            left = ends_at - time.monotonic() if ends_at is not None else 900.0
            try:
                if left < MIN_CASE_S:
                    raise RuntimeError(f"{case}: skipped, {max(left, 0):.0f} s left of --deadline {deadline:.0f}")
                # The launcher first: for ResNet it builds the decoded cache that the plain loop reuses.
                launched = run_launcher(case, recipe, overrides, steps, work, args.profile, timeout=left)
            except Exception as exc:  # noqa: BLE001 - recorded, and the next case still runs
                failed += 1
                write({"case": case, "mode": "launcher", "steps": steps, "error": str(exc)[-4000:], **meta})
                continue
            try:
                plain = run_plain(recipe, overrides, steps, work)
                plain["step_time_vs_plain"] = 1.0
            except Exception as exc:  # noqa: BLE001 - the launcher's figures are still worth keeping
                failed += 1
                plain = {"error": f"{case}: plain loop failed: {type(exc).__name__}: {str(exc)[-3000:]}"}
            launched["step_time_vs_plain"] = (launched["step_time_s"] / plain["step_time_s"]
                                              if "step_time_s" in plain else None)
            for mode, measured in (("launcher", launched), ("plain", plain)):
                write({"case": case, "mode": mode, "steps": steps, **measured, **meta})
            keep_profile(work / f"run-{case}" / "profile", out_dir, f"profile-{case}-{stamp}")
    print(f"wrote {out_file}" + (f"; {failed} case(s) failed or were skipped" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
