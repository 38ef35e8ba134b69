"""The CPU proxy benchmark: what decides GPU speed, measured without a GPU.

    python bench/run.py --cpu            # everything below, about 10 minutes on 2 cores
    python bench/run.py --cpu --tiny     # the same sections, a few steps each (CI checks the schema)

One JSON line per measurement into bench/results/cpu-<time>.jsonl, `section` naming what it is:

- host_overhead: host time per optimizer step of a tiny model (batch 1, one process, where the
  model costs nothing and the loop is all that is left), per backend (accelerate ddp, deepspeed
  zero 0 and 2): `launcher run`, against a plain loop through the same backend (same wrapper,
  DataLoader, clipping and per-step LR: the difference is the launcher's own pieces), and a plain
  torch loop (torch's DDP, as Accelerate wraps the model in a process group, and torch's clipping:
  the difference is the backend's own wrapper and ours). Runs alternate; medians of their
  per-interval step times.
- syncs: per recipe, the calls in an optimizer step that would make the host wait for a GPU
  (launcher.runtime.syncs: .item(), .tolist(), truth values, device tensors from host data), each
  with its file:line, over steps that are no log steps.
- attention: per language model, what SDPA receives in a training forward (a mask, is_causal), and
  torch.compile's graph breaks (torch._dynamo.explain).
- loader: samples per second of each recipe's input pipeline on one core (the training thread, no
  workers): BERT masking and pairing (with the padding fraction of its batches, also on Austen's
  chapters at seq 128 and 512 without and with data.group_by_length), GPT blocks, and
  ResNet's 224-px crops from photo-sized JPEGs three ways: the original files decoded at each
  access, the compact JPEG store (data.jpeg_cache: 256) and the decoded store (data.decoded_cache:
  256), each with its bytes per stored image.
- launch: time from `launcher run` to the first optimizer step, minus the build and that step
  (launch_overhead_s), with spawned and forked ranks, and a plain script's time to its first step.
- plan: whole-process seconds of `launcher plan --json` for one host and for 10,000 (pdsh, 8 slots
  each), alternated, medians.
- rank_gather: what the per-rank timings cost (issue 24): the log step's one all_gather of every
  rank's loss, flag, target count and timings (launcher.runtime.dist.gather_rows), in a real
  2-process gloo group on this machine, per call and averaged over a log interval.
- hang_watch: what the hang watch costs a rank per step (issue 35): one Heartbeat.beat, a store of
  16 bytes into a mapped page (launcher/runtime/heartbeat.py), timed in-process over many calls,
  median of the repeats; and, for scale, one poll of the launcher's watch over 64 ranks' files
  (outside the ranks, once a second).
- optimizer: ms per AdamW step on the CPU over 50M parameters (ZeRO-Offload's optimizer step), for
  torch's AdamW (foreach, its default, and fused) and DeepSpeed's CPU Adam, and which one the
  DeepSpeed backend builds for `offload_optimizer: true` over the recipe's parameter groups.

Figures here are never asserted in a test; `tests/integration/test_bench.py` checks the schema.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MLP = ["model.hidden=32", "model.layers=2", "data.samples=4096", "data.eval_samples=8", "data.features=16",
       "batch.global=1", "batch.micro=1", "optimizer.lr=1e-3", "scheduler.warmup_steps=1",
       "train.eval_every=0", "checkpoint.every_steps=0", "tracking.mode=disabled", "cluster.nproc_per_node=1"]
BACKENDS = {"accelerate ddp": ["backend.name=accelerate", "backend.strategy=ddp"],
            "deepspeed zero0": ["backend.name=deepspeed", "backend.zero_stage=0"],
            "deepspeed zero2": ["backend.name=deepspeed", "backend.zero_stage=2"]}
INTERVAL = 100  # steps per log interval: one step-time figure each
SCHEMA = {
    "host_overhead": {"backend", "launcher_ms", "same_backend_loop_ms", "torch_loop_ms", "launcher_pieces_ms",
                      "over_torch_loop_ms", "steps", "repeats"},
    "syncs": {"recipe", "backend", "syncs_per_step", "where", "steps"},
    "attention": {"recipe", "sdpa_calls", "with_mask", "causal", "graph_breaks", "break_reasons"},
    "loader": {"pipeline", "samples_per_s_per_core", "samples", "bytes_per_sample", "stored_bytes_per_image"},
    "launch": {"variant", "launch_overhead_s", "launch_to_first_step_s", "over_plain_script_s", "repeats"},
    "optimizer": {"optimizer", "ms_per_step", "parameters", "threads", "repeats", "chosen_for_offload"},
    "rank_gather": {"world_size", "ms_per_gather", "log_every", "ms_per_step", "gathers"},
    "plan": {"hosts", "seconds", "repeats"},
    "hang_watch": {"ms_per_step", "beats", "repeats", "poll_ms_64_ranks"},
}


def launcher_env(**extra: str) -> dict[str, str]:
    """The environment a benchmark starts `launcher` in (also bench/hangs.py, bench/reshard.py)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Host overhead per optimizer step


def launcher_step_ms(backend: str, steps: int, work: Path, start_method: str = "spawn") -> float:
    run_dir = work / f"overhead-{backend.replace(' ', '-')}-{time.monotonic_ns()}"
    argv = [sys.executable, "-m", "launcher.cli", "run", "mlp-tiny", "--run-dir", str(run_dir), "--nproc", "1",
            *MLP, *BACKENDS[backend], f"train.steps={steps}", f"train.log_every={INTERVAL}",
            f"cluster.start_method={start_method}"]
    done = subprocess.run(argv, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"launcher run ({backend}) failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records if "loss" in r and r["step"] > INTERVAL]  # the first: warm-up
    return statistics.median(times) * 1000


def loop_step_ms(kind: str, backend: str, steps: int) -> float:
    """A plain loop in a process of its own: kind `backend` (our backend class, no trainer) or
    `torch` (torch's DDP and clipping: no Accelerate, no DeepSpeed)."""
    env = launcher_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    done = subprocess.run([sys.executable, __file__, "loop", kind, backend, str(steps)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"plain loop ({kind}, {backend}) failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def plain_loop(kind: str, backend: str, steps: int) -> float:
    """The loop the launcher's trainer is measured against: the same recipe module, model, data
    order and DataLoader; set the LR, forward, backward, clip, step. Median ms per step."""
    import torch
    import torch.distributed as dist

    from launcher.config.load import load_recipe
    from launcher.plan.batch import batch_math
    from launcher.recipe_module import RunContext
    from launcher.runtime.dist import from_environment
    from launcher.runtime.sampling import GlobalOrder, StepBatches, StreamData
    from launcher.runtime.schedule import lr_at

    recipe = load_recipe(ROOT / "recipes" / "mlp-tiny.yaml", [*MLP, *BACKENDS[backend], f"train.steps={steps}"]).recipe
    env = from_environment()
    math = batch_math(1, 1, (1,), steps, 1, None)
    torch.manual_seed(0)
    if kind == "backend":
        from launcher.backends import make_backend
        from launcher.backends.optim import param_groups

        if not dist.is_initialized() and backend.startswith("accelerate"):
            dist.init_process_group("gloo")
        engine = make_backend(recipe, math, env)
        from launcher.recipes import mlp_regression

        task = mlp_regression.build(recipe, RunContext(0, 0, 1, engine.device, "/tmp", lambda: None))
        engine.prepare(task.model, param_groups(task.model, 0.0, False))
        model = engine.model

        def update(loss, lr, step):
            engine.backward(loss, last=True)
            engine.step(lr, step)
    else:  # torch alone, with the DDP wrapper Accelerate puts around the model in a process group
        from torch.nn.parallel import DistributedDataParallel

        from launcher.backends.optim import build_optimizer, param_groups, set_lr
        from launcher.recipes import mlp_regression

        dist.init_process_group("gloo")
        task = mlp_regression.build(recipe, RunContext(0, 0, 1, torch.device("cpu"), "/tmp", lambda: None))
        model = DistributedDataParallel(task.model)
        optimizer = build_optimizer(param_groups(task.model, 0.0, False), recipe.optimizer)

        def update(loss, lr, step):
            loss.backward()
            set_lr(optimizer, lr, step)
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optimizer.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    order = GlobalOrder(len(task.train_data), recipe.seed)
    loader = torch.utils.data.DataLoader(StreamData(task.train_data, order), collate_fn=task.collate,
                                         batch_sampler=StepBatches(order, 1, 1, 1, 0, 0, steps))
    times, started = [], time.perf_counter()
    for step, batch in enumerate(loader):
        loss_sum, count = task.loss(model, batch)
        update(loss_sum / count, lr_at(step, recipe.optimizer.lr, steps, recipe.scheduler), step)
        if (step + 1) % INTERVAL == 0:
            now = time.perf_counter()
            times.append((now - started) / INTERVAL)
            started = now
    return statistics.median(times[1:]) * 1000


def host_overhead(steps: int, repeats: int, work: Path, backends: list[str]) -> list[dict]:
    out = []
    for backend in backends:
        figures: dict[str, list[float]] = {"launcher": [], "backend": [], "torch": []}
        for _ in range(repeats):  # alternated, so drift of the machine hits all three alike
            figures["launcher"].append(launcher_step_ms(backend, steps, work))
            figures["backend"].append(loop_step_ms("backend", backend, steps))
            figures["torch"].append(loop_step_ms("torch", backend, steps))
        launcher, same, plain = (statistics.median(figures[k]) for k in ("launcher", "backend", "torch"))
        out.append({"section": "host_overhead", "backend": backend, "launcher_ms": launcher,
                    "same_backend_loop_ms": same, "torch_loop_ms": plain, "launcher_pieces_ms": launcher - same,
                    "over_torch_loop_ms": launcher - plain, "steps": steps, "repeats": repeats,
                    "all_ms": figures})
    return out


# ---------------------------------------------------------------------------------------------
# Syncs per optimizer step, attention paths and loaders: in this process, on one rank


def recipe_task(case: str, data: dict[str, Path], work: Path, extra: tuple[str, ...] = ()):
    """(recipe, batch math, task, backend) of a tiny recipe on this process (world size 1)."""
    import torch

    from launcher.backends import make_backend
    from launcher.config.load import load_recipe
    from launcher.plan.batch import batch_math
    from launcher.recipe_module import RunContext
    from launcher.runtime.dist import from_environment

    recipe_file, overrides = RECIPES[case]
    overrides = [o.format(**data) for o in overrides]
    os.environ["LAUNCHER_CACHE_DIR"] = str(work / "cache")
    loaded = load_recipe(ROOT / "recipes" / recipe_file, [*overrides, *extra, "tracking.mode=disabled"])
    recipe = loaded.recipe
    math = batch_math(recipe.batch.global_, recipe.batch.micro, (1,), recipe.train.steps, 0, None)
    torch.manual_seed(0)
    backend = make_backend(recipe, math, from_environment())
    (work / case).mkdir(exist_ok=True)
    task = loaded.recipe_module.build(recipe, RunContext(0, 0, 1, backend.device, str(work / case), lambda: None))
    return recipe, math, task, backend


RECIPES = {
    "mlp": ("mlp-tiny.yaml", ["batch.global=16", "batch.micro=8"]),
    "gpt": ("gpt-pretrain-tiny.yaml", ["data.corpus={text}", "batch.global=8", "batch.micro=4"]),
    "bert": ("bert-pretrain-tiny.yaml", ["data.corpus={text}", "batch.global=8",
                                         "batch.micro=4", "data.dupe_factor=1"]),
    "resnet": ("resnet-pretrain-tiny.yaml", ["data.source={images}", "data.image_size=32", "batch.global=8",
                                             "batch.micro=4", "data.train_limit=0", "data.eval_limit=8"]),
    # The GPU recipes' input: 224-px crops from photo-sized JPEGs (500 x 375, ImageNet's typical size).
    "resnet224": ("resnet-pretrain-tiny.yaml", ["data.source={photos}", "data.image_size=224", "batch.global=8",
                                                "batch.micro=4", "data.train_limit=0", "data.eval_limit=8"]),
}
# BERT pairs from Austen's chapters in global batches of 256 (micro 32): what padding the batches carry.
BERT_AUSTEN = ("data.corpus=package:austen", "batch.global=256", "batch.micro=32", "data.dupe_factor=1")
# The ResNet input variants at 224 px: original JPEGs decoded at each access, the compact JPEG store
# (short side 256, ~20-40 KB per image) at the default quality 90 and at 85 (what a smaller, faster
# store costs), and the decoded store (uint8 256 x 256, 196 KB per image).
RESNET_STORES = ((), ("data.jpeg_cache=256",), ("data.jpeg_cache=256", "data.jpeg_quality=85"),
                 ("data.decoded_cache=256",))


def syncs_per_step(case: str, backend_name: str, steps: int, data: dict[str, Path], work: Path) -> dict:
    """Optimizer steps through the trainer's own step function (data, forward, backward, update,
    the stop agreement), none of them a log step, counted."""
    import torch

    from launcher.backends.optim import param_groups
    from launcher.runtime.nonfinite import NonFiniteGuard
    from launcher.runtime.run import Run
    from launcher.runtime.sampling import GlobalOrder, StepBatches, StreamData
    from launcher.runtime.schedule import lr_at
    from launcher.runtime.stopping import StopRequest
    from launcher.runtime.syncs import count_syncs
    from launcher.runtime.trainer import Interval, _train_step

    recipe, math, task, backend = recipe_task(case, data, work, tuple(BACKENDS[backend_name]))
    backend.prepare(task.model, task.param_groups or param_groups(task.model, 0.0, False))
    run = Run(recipe, task, backend, math, _world_of_one(), str(work / case), None, None, None, None, 0, steps,
              "")
    order = GlobalOrder(len(task.train_data), 0, task.shuffle)
    batches = iter(torch.utils.data.DataLoader(StreamData(task.train_data, order), collate_fn=task.collate,
                                               batch_sampler=StepBatches(order, math.global_batch, math.micro, 1,
                                                                         0, 0, steps + 2)))
    interval, guard, stop = Interval(backend.device), NonFiniteGuard("stop", 0, backend.device, 0), StopRequest()
    for step in range(2):  # warm-up: lazily built state (optimizer moments, DeepSpeed's buffers)
        _train_step(run, [next(batches) for _ in range(math.accumulation)], 1e-4, step, interval, guard)
    with count_syncs(backend.device.type) as found:
        for step in range(2, steps + 2):
            micro = [next(batches) for _ in range(math.accumulation)]
            _train_step(run, micro, lr_at(step, 1e-4, steps + 2, recipe.scheduler), step, interval, guard)
            stop.agreed()
    stop.finish()
    return {"section": "syncs", "recipe": case, "backend": backend_name,
            "syncs_per_step": sum(found.values()) / steps, "where": dict(found), "steps": steps}


def _world_of_one():
    from launcher.runtime.dist import DistEnv

    return DistEnv(0, 0, 1, 1)


def attention_paths(case: str, data: dict[str, Path], work: Path) -> dict:
    import torch

    _, _, task, _ = recipe_task(case, data, work)
    batch = task.collate([task.train_data[i] for i in range(4)])
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def record(*args, **kwargs):
        calls.append((kwargs.get("attn_mask") is not None, bool(kwargs.get("is_causal"))))
        return original(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = record
    try:
        task.loss(task.model, batch)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    explained = torch._dynamo.explain(lambda b: task.loss(task.model, b))(batch)
    torch._dynamo.reset()
    return {"section": "attention", "recipe": case, "sdpa_calls": len(calls),
            "with_mask": sum(m for m, _ in calls), "causal": sum(c for _, c in calls),
            "graph_breaks": explained.graph_break_count,
            "break_reasons": sorted({str(r.reason)[:160] for r in explained.break_reasons})}


def loader_throughput(case: str, data: dict[str, Path], work: Path, samples: int,
                      extra: tuple[str, ...] = ()) -> dict:
    """Samples per second through the recipe's dataset and collate, on this (one) core."""
    return loader_alternated(case, [extra], data, work, samples, 1)[0]


def loader_alternated(case: str, variants: list[tuple[str, ...]], data: dict[str, Path], work: Path,
                      samples: int, rounds: int) -> list[dict]:
    """loader_throughput for each variant, measured in `rounds` alternated passes (A B C A B C):
    this machine's speed drifts within seconds, so one pass per variant can rank them wrongly.
    Each record holds the median pass and every pass (`all_samples_per_s`)."""
    import pickle

    import torch

    from launcher.runtime.sampling import GlobalOrder, StreamData

    pipelines = []
    for extra in variants:
        _, math, task, _ = recipe_task(case, data, work, extra)
        stream = StreamData(task.train_data, GlobalOrder(len(task.train_data), 0, task.shuffle, task.lengths,
                                                         math.global_batch))
        pipelines.append((extra, task, stream, math.micro, []))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core: torch's resize would otherwise use every core
    try:
        for _, task, stream, micro, _ in pipelines:
            task.collate([stream[i] for i in range(micro)])  # warm-up (caches opened, first decode)
        for _ in range(rounds):
            for _, task, stream, micro, passes in pipelines:
                passes.append(_loader_pass(task, stream, micro, samples))
    finally:
        torch.set_num_threads(threads)
    records = []
    for extra, task, stream, _, passes in pipelines:
        rates = [done / elapsed for done, elapsed, _, _ in passes]
        done, _, real, padded = passes[0]
        records.append({"section": "loader", "pipeline": f"{case}{' ' + ' '.join(extra) if extra else ''}",
                        "samples_per_s_per_core": statistics.median(rates), "samples": done,
                        "all_samples_per_s": rates, "bytes_per_sample": len(pickle.dumps(stream[0])),
                        "stored_bytes_per_image": _stored_bytes(task.train_data),
                        "padding_fraction": 1 - real / padded if padded else None})
    return records


def _loader_pass(task, stream, micro: int, samples: int) -> tuple[int, float, int, int]:
    """(samples, seconds, real tokens, padded tokens) of one pass of `samples` through the loader."""
    started = time.perf_counter()
    done, real, padded = 0, 0, 0
    while done < samples:
        batch = task.collate([stream[done + i] for i in range(micro)])
        done += micro
        if "attention_mask" in batch:  # BERT: how much of each padded batch is padding
            real, padded = real + int(batch["attention_mask"].sum()), padded + batch["attention_mask"].numel()
    return done, time.perf_counter() - started, real, padded


def _stored_bytes(dataset) -> float | None:
    """What one training image costs on disk: the store's bytes, or the original files' (None for
    text and in-memory sets)."""
    images = getattr(dataset, "data", None)
    if images is None:
        return None
    if hasattr(images, "offsets"):  # the JPEG store
        return float(images.offsets[-1] / len(images))
    if hasattr(images, "size") and hasattr(images, "directory"):  # the decoded store
        return float(3 * images.size * images.size)
    if hasattr(images, "files"):
        return sum(path.stat().st_size for path, _ in images.files) / len(images.files)
    return None


# ---------------------------------------------------------------------------------------------
# Planning: `launcher plan --json` for a cluster of thousands of hosts


def plan_json_seconds(hosts: int, repeats: int, work: Path) -> list[dict]:
    """Whole-process time of `launcher plan --json` (pdsh, 8 slots a host) for one host and for
    `hosts`, alternated; the one-host figure is the fixed cost (interpreter, imports, recipe)."""
    files = {}
    for count in (1, hosts):
        files[count] = work / f"hostfile-{count}"
        files[count].write_text("".join(f"node{i:05d} slots=8\n" for i in range(count)))
    times: dict[int, list[float]] = {1: [], hosts: []}
    for _ in range(repeats + 1):  # the first round warms the page cache and the bytecode
        for count in (1, hosts):
            argv = [sys.executable, "-m", "launcher.cli", "plan", "mlp-tiny", "--hostfile", str(files[count]),
                    "--json", f"batch.global={16 * 8 * count}", "batch.micro=16"]
            started = time.perf_counter()
            done = subprocess.run(argv, cwd=ROOT, env=launcher_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, timeout=120)
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"launcher plan --json ({count} hosts) failed:\n{done.stderr[-2000:]}")
            times[count].append(elapsed)
    return [{"section": "plan", "hosts": count, "seconds": statistics.median(t[1:]), "repeats": repeats}
            for count, t in times.items()]


# ---------------------------------------------------------------------------------------------
# Launch: `launcher run` to the first optimizer step


def launch(repeats: int, work: Path) -> list[dict]:
    """Spawned ranks, forked ranks and a plain script, interleaved (drift hits all three alike)."""
    runs: dict[str, list[dict]] = {"spawn": [], "fork": [], "plain": []}
    for _ in range(repeats):
        for method in ("spawn", "fork"):
            runs[method].append(_launcher_first_step(method, work))
        runs["plain"].append(_plain_first_step())
    plain = statistics.median(r["launch_to_first_step_s"] for r in runs["plain"])
    out = []
    for variant, figures in runs.items():
        first = statistics.median(f["launch_to_first_step_s"] for f in figures)
        name = "plain script" if variant == "plain" else f"launcher run, {variant}"
        out.append({"section": "launch", "variant": name,
                    "launch_overhead_s": statistics.median(f["launch_overhead_s"] for f in figures),
                    "launch_to_first_step_s": first, "over_plain_script_s": first - plain, "repeats": repeats,
                    "startup": figures[-1].get("startup")})
    return out


def _launcher_first_step(start_method: str, work: Path) -> dict:
    run_dir = work / f"launch-{start_method}-{time.monotonic_ns()}"
    argv = [sys.executable, "-m", "launcher.cli", "run", "mlp-tiny", "--run-dir", str(run_dir), "--nproc", "1",
            *MLP, "train.steps=2", "train.log_every=1", f"cluster.start_method={start_method}"]
    done = subprocess.run(argv, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"launcher run ({start_method}) failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in records if "launch_overhead_s" in r)


_PLAIN_SCRIPT = """
import sys, time
started = float(sys.argv[1])
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 32), torch.nn.GELU(),
                            torch.nn.Linear(32, 4))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model(torch.randn(1, 16)).pow(2).mean().backward()
optimizer.step()
print(time.time() - started)
"""


def _plain_first_step() -> dict:
    """The same model's first step from a fresh `python` (torch's own import, no launcher)."""
    done = subprocess.run([sys.executable, "-c", _PLAIN_SCRIPT, repr(time.time())], env=launcher_env(),
                          capture_output=True, text=True, timeout=120)
    elapsed = float(done.stdout.strip().splitlines()[-1])
    return {"launch_overhead_s": elapsed, "launch_to_first_step_s": elapsed}


# ---------------------------------------------------------------------------------------------


def run_cpu(tiny: bool, out_dir: Path, work: Path, generate_text, generate_images, generate_photos,
            meta: dict, sections: list[str] | None = None) -> Path:
    """Every section (or those named); one JSON line each. Returns the results file."""
    work.mkdir(parents=True, exist_ok=True)
    data = {"text": generate_text(work / "text.txt", 60 if tiny else 600),
            "images": generate_images(work / "images", 8 if tiny else 64, 64),
            "photos": generate_photos(work / "photos", 4 if tiny else 64)}
    steps, repeats = (3 * INTERVAL, 1) if tiny else (20 * INTERVAL, 5)
    stamp = meta["time"]
    out_file = out_dir / f"cpu-{'tiny-' if tiny else ''}{stamp}.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w") as handle:
        def write(record: dict) -> None:
            record = {**record, **meta}
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            print(json.dumps(record), flush=True)

        def wanted(section: str) -> bool:
            return sections is None or section in sections

        if wanted("hang_watch"):
            write(hang_watch_cost(10_000 if tiny else 1_000_000, 1 if tiny else 5, work))
        if wanted("host_overhead"):
            for record in host_overhead(steps, repeats, work, list(BACKENDS) if not tiny else ["accelerate ddp"]):
                write(record)
        _single_process_group()
        if wanted("syncs"):
            for case in ("mlp", "resnet", "gpt", "bert"):
                for backend in (("accelerate ddp", "deepspeed zero2") if not tiny else ("accelerate ddp",)):
                    write(syncs_per_step(case, backend, 3 if tiny else 10, data, work))
        if wanted("attention"):
            for case in ("gpt", "bert"):
                write(attention_paths(case, data, work))
        samples = 64 if tiny else 2048
        if wanted("loader"):
            for case in ("bert", "gpt"):
                write(loader_throughput(case, data, work, samples))
            for record in loader_alternated("resnet224", list(RESNET_STORES), data, work, samples // 4,
                                            1 if tiny else 5):
                write(record)
            if not tiny:  # padding of real text's pairs, without and with data.group_by_length
                for seq, grouped in ((128, "false"), (128, "true"), (512, "false"), (512, "true")):
                    shape = (f"data.max_seq_len={seq}", f"data.max_predictions={seq * 3 // 20 + 1}")
                    write(loader_throughput("bert", data, work, 2 * samples,
                                            (*BERT_AUSTEN, *shape, f"data.group_by_length={grouped}")))
        if wanted("launch"):
            for record in launch(repeats if not tiny else 1, work):
                write(record)
        if wanted("plan"):
            for record in plan_json_seconds(100 if tiny else 10_000, 1 if tiny else 7, work):
                write(record)
        if wanted("rank_gather"):
            write(rank_gather_cost(200 if tiny else 5000))
        if wanted("optimizer"):
            for record in offload_optimizers(1_000_000 if tiny else 50_000_000, 1 if tiny else 15, not tiny):
                write(record)
    return out_file


def hang_watch_cost(beats: int, repeats: int, work: Path) -> dict:
    """The rank's share of the hang watch: the trainer calls Heartbeat.beat once per optimizer step."""
    from launcher.engines.hang_watch import HangSettings, HangWatch
    from launcher.runtime.heartbeat import Heartbeat

    run_dir = work / "hang-watch"
    heartbeat = Heartbeat(str(run_dir), 0)
    per_beat = []
    for _ in range(repeats):
        started = time.perf_counter()
        for step in range(beats):
            heartbeat.beat(step)
        per_beat.append((time.perf_counter() - started) / beats)
    heartbeat.close()
    for rank in range(1, 64):
        Heartbeat(str(run_dir), rank).close()
    watch = HangWatch(run_dir, 64, HangSettings())
    started = time.perf_counter()
    for _ in range(100):
        watch.poll()
    return {"section": "hang_watch", "ms_per_step": round(statistics.median(per_beat) * 1e3, 6), "beats": beats,
            "repeats": repeats, "poll_ms_64_ranks": round((time.perf_counter() - started) / 100 * 1e3, 3)}


def rank_gather_cost(gathers: int, world_size: int = 2) -> dict:
    """The log step's gather (trainer._log_interval), timed on rank 0 of a fresh gloo group."""
    import torch.multiprocessing as mp

    from launcher.config.schema import TrainConfig

    port = _free_port()
    results = mp.get_context("spawn").SimpleQueue()
    workers = [mp.get_context("spawn").Process(target=_gather_worker, args=(rank, world_size, port, gathers, results))
               for rank in range(world_size)]
    for worker in workers:
        worker.start()
    ms = results.get()
    for worker in workers:
        worker.join()
    log_every = TrainConfig.log_every
    return {"section": "rank_gather", "world_size": world_size, "ms_per_gather": ms, "log_every": log_every,
            "ms_per_step": ms / log_every, "gathers": gathers}


def _gather_worker(rank: int, world_size: int, port: int, gathers: int, results) -> None:
    import torch
    import torch.distributed as dist

    from launcher.runtime.dist import gather_rows

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    row = torch.arange(5, dtype=torch.float64)  # loss, flag, target count, data and compute time
    for _ in range(20):
        gather_rows(row)  # warm-up: connections made
    times = []
    for _ in range(gathers):
        started = time.perf_counter()
        gather_rows(row)
        times.append((time.perf_counter() - started) * 1e3)
    if rank == 0:
        results.put(statistics.median(times))
    dist.destroy_process_group()


def offload_optimizers(parameters: int, repeats: int, with_deepspeed: bool = True) -> list[dict]:
    """One AdamW step over `parameters` fp32 values in two groups (decayed weights at a full LR and
    undecayed ones at half), as ZeRO-Offload steps it on the CPU; median of `repeats` after one
    warm-up step, the optimizers stepping in turn. `chosen_for_offload` marks what the DeepSpeed backend builds for
    `offload_optimizer: true` (fused_optimizer_fits). DeepSpeed's CPU Adam is the yardstick (its
    one-time C++ build is left out of the tiny run)."""
    import torch

    from launcher.backends.deepspeed_backend import fused_optimizer_fits
    from launcher.backends.optim import build_optimizer
    from launcher.config.schema import OptimizerConfig

    config = OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.01)
    chosen = "torch adamw (fused)" if fused_optimizer_fits(torch.device("cpu"), True) else "torch adamw (foreach)"

    def groups() -> list[dict]:
        weights = torch.zeros(parameters - parameters // 100, requires_grad=True)
        biases = torch.zeros(parameters // 100, requires_grad=True)
        for tensor in (weights, biases):
            tensor.grad = torch.full_like(tensor, 1e-3)
        return [{"params": [weights], "weight_decay": 0.01, "lr_scale": 1.0},
                {"params": [biases], "weight_decay": 0.0, "lr_scale": 0.5}]

    def deepspeed_cpu_adam(g):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(g, lr=config.lr, adamw_mode=True)

    builders = {"torch adamw (foreach)": lambda g: build_optimizer(g, config, fused=False),
                "torch adamw (fused)": lambda g: build_optimizer(g, config, fused=True)}
    if with_deepspeed:
        builders["deepspeed cpu adam"] = deepspeed_cpu_adam
    optimizers = {name: build(groups()) for name, build in builders.items()}
    for optimizer in optimizers.values():
        optimizer.step()  # state allocation, first touch
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(repeats):  # in turn, so a drift of the machine's speed touches each alike
        for name, optimizer in optimizers.items():
            started = time.perf_counter()
            optimizer.step()
            times[name].append((time.perf_counter() - started) * 1e3)
    return [{"section": "optimizer", "optimizer": name, "ms_per_step": statistics.median(times[name]),
             "parameters": parameters, "threads": torch.get_num_threads(), "repeats": repeats,
             "chosen_for_offload": name == chosen} for name in optimizers]


def _single_process_group() -> None:
    """The in-process sections run the backends as one rank of a world of one (gloo)."""
    import torch.distributed as dist

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(_free_port()))
    if not dist.is_initialized():
        dist.init_process_group("gloo")


def check_schema(path: Path) -> list[str]:
    """What is missing from each line of a results file (the tiny CI run asserts it is nothing)."""
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        record = json.loads(line)
        wanted = SCHEMA.get(record.get("section"))
        if wanted is None:
            problems.append(f"line {number}: unknown section {record.get('section')!r}")
        elif wanted - record.keys():
            problems.append(f"line {number} ({record['section']}): missing {sorted(wanted - record.keys())}")
    return problems


if __name__ == "__main__" and sys.argv[1:2] == ["loop"]:
    print(plain_loop(sys.argv[2], sys.argv[3], int(sys.argv[4])))
