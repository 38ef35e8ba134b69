"""Pure runtime pieces: the LR curve and the global sample order."""

import math

import pytest

from launcher.config.schema import SchedulerConfig
from launcher.runtime.sampling import GlobalOrder, StepBatches
from launcher.runtime.schedule import lr_at


def closed_form(name, step, base, total, warmup, floor_ratio=0.1, gamma=0.5, step_size=7, decay_steps=5):
    if step < warmup:
        return base * (step + 1) / warmup
    t = step - warmup
    p = min(1.0, t / max(1, total - warmup))
    floor = base * floor_ratio
    return {
        "constant": base,
        "linear": floor + (base - floor) * (1 - p),
        "cosine": floor + (base - floor) * (1 + math.cos(math.pi * p)) / 2,
        "exponential": base * gamma ** (t / decay_steps),
        "step": base * gamma ** (t // step_size),
    }[name]


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "exponential", "step"])
def test_lr_matches_closed_form(name):
    cfg = SchedulerConfig(name=name, warmup_steps=4, min_lr_ratio=0.1, gamma=0.5, step_size=7, decay_steps=5)
    for step in range(30):
        assert lr_at(step, 1e-3, 30, cfg) == pytest.approx(closed_form(name, step, 1e-3, 30, 4), rel=1e-12)
    assert lr_at(0, 1e-3, 30, cfg) > 0  # warmup never starts at zero


def test_cosine_and_linear_end_at_floor():
    for name in ("cosine", "linear"):
        cfg = SchedulerConfig(name=name, warmup_steps=0, min_lr_ratio=0.1)
        assert lr_at(100, 1.0, 100, cfg) == pytest.approx(0.1)


def _seen(size, global_batch, micro, world, start, end, seed=0):
    order = GlobalOrder(size, seed)
    seen = []
    for rank in range(world):
        batches = StepBatches(order, global_batch, micro, world, rank, start, end)
        seen += [order.index(p) for batch in batches for p in batch]
    return seen


def test_each_epoch_is_a_permutation_and_epochs_differ():
    order = GlobalOrder(50, seed=3)
    first = [order.index(p) for p in range(50)]
    second = [order.index(p) for p in range(50, 100)]
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second


def test_world_size_does_not_change_what_a_step_sees():
    # 1 process x micro 8 and 4 processes x micro 2 read the same samples in every step.
    for step in range(12):
        one = sorted(_seen(37, 8, 8, 1, step, step + 1))
        four = sorted(_seen(37, 8, 2, 4, step, step + 1))
        assert one == four


def test_length_grouping_gives_each_global_batch_one_length_and_keeps_every_epoch_whole():
    import random

    size, group = 1003, 16  # epochs do not end on a batch boundary: batches run across them
    lengths = [random.Random(i).randint(10, 128) for i in range(size)]
    grouped = GlobalOrder(size, 5, lengths=lengths, group=group)
    plain = GlobalOrder(size, 5)
    stream = [grouped.index(p) for p in range(3 * size)]
    for epoch in range(3):
        assert sorted(stream[epoch * size:(epoch + 1) * size]) == list(range(size))  # 0 duplicated, 0 skipped

    def spread(order_stream):  # the length range inside each global batch of the stream
        batches = [order_stream[s:s + group] for s in range(0, len(order_stream) - group + 1, group)]
        return sorted(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)

    grouped_spread, plain_spread = spread(stream), spread([plain.index(p) for p in range(3 * size)])
    # Batches aligned with the stream's own: those of the full 800-sample windows span 1-4 of the 119
    # lengths (the short windows at each epoch's end, and batches across epochs, spread more);
    # unsorted batches span most of 10..128.
    assert grouped_spread[len(grouped_spread) * 3 // 4] <= 4, grouped_spread
    assert plain_spread[len(plain_spread) // 10] > 60, plain_spread
    # The batches come in a random order, not short to long.
    means = [sum(lengths[i] for i in stream[s:s + group]) / group for s in range(0, size - group, group)]
    assert sum(a < b for a, b in zip(means[:-1], means[1:], strict=True)) < 0.75 * (len(means) - 1)
    # Random access (a resumed run) sees what the stream saw; the micro-batch and world size play no part.
    again = GlobalOrder(size, 5, lengths=lengths, group=group)
    assert [again.index(p) for p in range(2 * size + 7, 2 * size + 300)] == stream[2 * size + 7:2 * size + 300]
    with pytest.raises(ValueError, match="1003 lengths"):
        GlobalOrder(size, 5, lengths=lengths[:-1], group=group)


def test_resume_mid_epoch_neither_duplicates_nor_skips():
    whole = _seen(30, 8, 2, 2, 0, 10)
    # Per step, the multiset of samples is the same when the run is cut at step 4 (mid-epoch).
    split = _seen(30, 8, 2, 2, 0, 4) + _seen(30, 8, 2, 2, 4, 10)
    assert sorted(whole) == sorted(split)
    assert len(whole) == 80


def test_fused_optimizer_on_the_gpu_and_for_zero_offloads_cpu_step():
    import torch

    from launcher.backends.deepspeed_backend import fused_optimizer_fits

    assert fused_optimizer_fits(torch.device("cuda", 0), offload_optimizer=False)
    # ZeRO-Offload steps on the CPU: the fused CPU kernel, not torch's per-tensor default (6x slower).
    assert fused_optimizer_fits(torch.device("cuda", 0), offload_optimizer=True)
    assert fused_optimizer_fits(torch.device("cpu"), offload_optimizer=True)
    assert not fused_optimizer_fits(torch.device("cpu"), offload_optimizer=False)


def test_the_offload_optimizer_keeps_our_groups_and_matches_torchs_default_adamw():
    """The fused CPU AdamW that ZeRO-Offload now steps with: per-group LR scale and weight decay
    as set_lr and param_groups give them, and the updates of torch's default AdamW."""
    import torch

    from launcher.backends.optim import build_optimizer, set_lr
    from launcher.config.schema import OptimizerConfig

    torch.manual_seed(0)
    start = [torch.randn(64, 16), torch.randn(16)]
    config = OptimizerConfig(name="adamw", lr=1e-2, weight_decay=0.1)

    def run(fused: bool) -> list:
        params = [p.clone().requires_grad_() for p in start]
        groups = [{"params": [params[0]], "weight_decay": 0.1, "lr_scale": 1.0},
                  {"params": [params[1]], "weight_decay": 0.0, "lr_scale": 0.25}]
        optimizer = build_optimizer(groups, config, fused=fused)
        generator = torch.Generator().manual_seed(1)
        for step in range(8):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            set_lr(optimizer, 1e-2 * (step + 1) / 8, step)
            optimizer.step()
        assert optimizer.param_groups[1]["lr"] == optimizer.param_groups[0]["lr"] * 0.25
        return params

    fused, default = run(True), run(False)
    for a, b in zip(fused, default, strict=True):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-6
    assert (fused[0] - start[0]).abs().max() > 1e-3  # it did train


def test_profile_window_skips_warm_up_steps_and_fits_in_what_the_run_has_left():
    from launcher.runtime.profiling import WARMUP_STEPS, profile_window

    assert profile_window(100, 0) == (0, 0)  # off
    assert profile_window(100, 5) == (WARMUP_STEPS, 5)  # compile and allocator steps not recorded
    assert profile_window(6, 5) == (0, 5)  # one profiler warm-up step, then all that is left
    assert profile_window(8, 2) == (3, 2)
    assert profile_window(1, 5) == (0, 0)  # no room for the profiler's own warm-up step
    for remaining in range(0, 12):
        for requested in range(0, 8):
            skip, active = profile_window(remaining, requested)
            assert skip + (1 if active else 0) + active <= remaining


def test_step_profiler_times_only_its_window_and_stops_after_it(tmp_path):
    import json
    import time

    import torch

    from launcher.runtime.profiling import StepProfiler

    profiler = StepProfiler(tmp_path, torch.device("cpu"), skip=1, active=2)
    model = torch.nn.Linear(16, 16)
    for step in range(6):
        model(torch.randn(4, 16)).sum().backward()
        time.sleep(0.2 if step < 2 else 0.05)  # the skipped and warm-up steps are slow
        profiler.step()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2
    # The two recorded steps took ~0.05 s each; neither the slow warm-up steps nor the profiler's
    # own event collection after the window are counted.
    assert 0.05 <= summary["wall_s_per_step"] < 0.15, summary["wall_s_per_step"]
    assert any("aten::" in row["name"] for row in summary["top"])
    assert (tmp_path / "trace.json").stat().st_size > 0
    assert profiler._profiler is None  # the rest of the run goes unprofiled


def test_deepspeed_runs_batchnorm_models_in_bf16_through_torch_autocast():
    import torch
    import torchvision

    from launcher.backends.deepspeed_backend import needs_torch_autocast
    from launcher.backends.deepspeed_schema import passthrough_problems
    from launcher.config.load import load_recipe
    from launcher.plan.batch import batch_math
    from launcher.plan.deepspeed import deepspeed_config
    from tests.helpers import ROOT

    assert needs_torch_autocast(torchvision.models.resnet18())
    assert not needs_torch_autocast(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)))

    recipe = load_recipe(ROOT / "recipes" / "resnet-transfer-tiny.yaml", ["backend.name=deepspeed"]).recipe
    math_ = batch_math(64, 32, (1,), steps=40, warmup=10, tokens_per_sample=None)
    cast = deepspeed_config(recipe, math_, "bf16")
    assert cast["bf16"]["enabled"] and "torch_autocast" not in cast
    autocast = deepspeed_config(recipe, math_, "bf16", torch_autocast=True)
    assert not autocast["bf16"]["enabled"] and not autocast["fp16"]["enabled"]
    assert autocast["torch_autocast"] == {"enabled": True, "dtype": "bf16"}
    assert passthrough_problems(autocast) == []  # DeepSpeed's own schema takes it
    assert "torch_autocast" not in deepspeed_config(recipe, math_, "fp32", torch_autocast=True)


def test_nccl_flight_recorder_dumps_into_the_run_directory(tmp_path, monkeypatch):
    from launcher.runtime.stuck import nccl_trace_env

    monkeypatch.chdir(tmp_path)
    env = nccl_trace_env("runs/a")  # relative: the dump happens later, from C++, wherever cwd is then
    assert env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == str(tmp_path / "runs" / "a" / "logs" / "nccl-trace" / "rank_")
    assert env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"


def test_stall_dump_fires_before_the_collective_timeout():
    from launcher.runtime.stuck import stall_dump_after

    assert stall_dump_after(1800) == 1620 and stall_dump_after(8) < 8 and stall_dump_after(1) == 1


def test_the_stall_watch_costs_a_clock_read_per_step_not_a_thread(monkeypatch):
    import faulthandler

    from launcher.runtime import stuck

    started = []
    monkeypatch.setattr(faulthandler, "dump_traceback_later", lambda *a, **k: started.append(a))
    monkeypatch.setattr(faulthandler, "cancel_dump_traceback_later", lambda: None)
    monkeypatch.setattr(stuck, "_armed_at", None)
    clock = [1000.0]
    monkeypatch.setattr(stuck.time, "monotonic", lambda: clock[0])
    for _ in range(10_000):  # 10,000 steps of 10 ms against a 60 s watch
        stuck.arm_stall_dump(60.0)
        clock[0] += 0.01
    assert len(started) == 4  # restarted every 30 s of steps (at 0, 30, 60, 90 s), not 10,000 times
    stuck.disarm_stall_dump()
    stuck.arm_stall_dump(60.0)
    assert len(started) == 5  # after evaluation or a save, the next step starts a fresh countdown


_STUCK_STEP = """
import time
from launcher.runtime import stuck
for _ in range(3):  # steps of 0.3 s: one countdown of 2 s, started once
    stuck.arm_stall_dump(2.0)
    time.sleep(0.3)
stuck.arm_stall_dump(2.0)
time.sleep(4)  # this step hangs (line 8)
print("still alive", flush=True)
"""


def test_a_step_that_hangs_still_leaves_its_stack_before_the_timeout():
    import subprocess
    import sys
    import time

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _STUCK_STEP], capture_output=True, text=True, timeout=60)
    assert "Timeout (0:00:02)!" in done.stderr and 'File "<string>", line 8 in <module>' in done.stderr, done.stderr
    assert "still alive" in done.stdout and time.monotonic() - started < 30


@pytest.mark.parametrize("name,precision,expected", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12), ("NVIDIA H100 PCIe", "bf16", 756.5e12),
    ("NVIDIA H100 NVL", "bf16", 835.5e12), ("NVIDIA H200", "bf16", 989.4e12), ("NVIDIA H200 NVL", "fp16", 835.5e12),
    ("NVIDIA H100 80GB HBM3", "fp32", 66.9e12), ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
    ("NVIDIA GH200 480GB", "bf16", 989.4e12), ("Tesla T4", "bf16", None), (None, "bf16", None),
])
def test_mfu_peaks_name_the_sku_and_the_precision(name, precision, expected):
    from launcher.runtime.metrics import peak_flops

    assert peak_flops(name, precision) == expected
