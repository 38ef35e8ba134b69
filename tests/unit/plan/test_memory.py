"""The memory estimate's arithmetic (launcher/plan/memory.py), on figures written out by hand."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from launcher.plan.memory import Model, Setup, alternatives, estimate, largest_fitting_micro, parse_size

MiB = 1024**2
MODEL = Model(params=1_000_000, trainable=1_000_000, param_bytes=4_000_000, buffer_bytes=0,
              largest_trainable=250_000, largest_block_bytes=1_000_000,
              activations={2: 2 * MiB, 4: 4 * MiB, 16: 16 * MiB}, with_gradients={2: 5 * MiB, 4: 6 * MiB, 16: 18 * MiB},
              batch_bytes={2: 2000, 4: 4000, 16: 16000},
              activations_checkpointed={2: MiB, 4: MiB, 16: MiB}, with_gradients_checkpointed={2: MiB, 4: MiB, 16: MiB})
DDP = Setup(backend="accelerate", strategy="ddp", zero_stage=0, offload_optimizer=False, offload_params=False,
            precision="fp32", optimizer_states=2, world_size=2, micro=16, activation_checkpointing=False, gpu=False,
            accumulation=2)


def terms(result) -> dict[str, int]:
    return {t.label: t.bytes for t in result.terms}


def test_ddp_is_weights_gradients_buckets_states_and_the_larger_of_activations_and_temporaries():
    result = estimate(MODEL, DDP)
    found = terms(result)
    assert found["parameters"] == found["gradients"] == found["DDP buckets"] == 4_000_000
    assert found["optimizer states"] == 8_000_000
    assert found["optimizer step temporaries [optimizer step]"] == 3 * 250_000 * 4
    assert found["the step's micro-batches"] == 2 * 16000
    assert result.peak == 20_000_000 + 32000 + 16 * MiB and result.phase == "backward"


def test_one_micro_batch_a_step_traces_activations_and_gradients_together():
    result = estimate(MODEL, dataclasses.replace(DDP, accumulation=1))
    assert result.peak == 16_000_000 + 16000 + 18 * MiB


def test_zero_stages_shard_what_they_say():
    def peak(**change):
        small_buckets = dataclasses.replace(DDP, backend="deepspeed", reduce_bucket=1000, prefetch_bucket=1000)
        return estimate(MODEL, dataclasses.replace(small_buckets, **change)).peak

    assert peak(zero_stage=3) < peak(zero_stage=2) <= peak(zero_stage=1)
    # Stage 1 keeps whole gradients and adds partition buffers: on 2 ranks it holds more than
    # stage 0 (as measured on CPU ranks, bench/results/memory-cpu-*.jsonl); on 8 it holds less.
    assert peak(zero_stage=1, world_size=8) < peak(zero_stage=0, world_size=8)
    stage1 = terms(estimate(MODEL, dataclasses.replace(DDP, backend="deepspeed", zero_stage=1, world_size=4)))
    assert stage1["optimizer states (partition)"] == 2 * 4_000_000 // 4
    offload = dataclasses.replace(DDP, backend="deepspeed", zero_stage=2, offload_optimizer=True, gpu=True)
    on_gpu = estimate(MODEL, offload)
    assert [t.host for t in on_gpu.terms if t.what == "optimizer states (partition)"] == [True]
    assert on_gpu.host_peak >= 4_000_000
    # Without a GPU the offloaded terms are in the same memory: they count in the peak.
    on_cpu = estimate(MODEL, dataclasses.replace(offload, gpu=False))
    found = terms(on_cpu)
    assert on_cpu.host_peak == 0 and not any(t.host for t in on_cpu.terms)
    assert on_cpu.peak >= found["optimizer states (partition)"] + found["fp32 partition"] + int(5e8) * 4


def test_the_default_reduce_bucket_costs_two_gib_in_fp32_whatever_the_model():
    found = terms(estimate(MODEL, dataclasses.replace(DDP, backend="deepspeed", zero_stage=2)))
    assert found["reduce bucket"] == int(5e8) * 4
    on_gpu = terms(estimate(MODEL, dataclasses.replace(DDP, backend="deepspeed", zero_stage=2, gpu=True)))
    assert on_gpu["reduce bucket"] == 2 * int(5e8) * 4  # overlap_comm double-buffers it


def test_fsdp_without_a_gpu_is_estimated_as_the_ddp_that_runs():
    cpu = estimate(MODEL, dataclasses.replace(DDP, strategy="fsdp"))
    assert cpu.peak == estimate(MODEL, DDP).peak and "runs as DDP" in cpu.note
    gpu = estimate(MODEL, dataclasses.replace(DDP, strategy="fsdp", gpu=True))
    assert terms(gpu)["parameters (sharded)"] == 2_000_000


def test_the_suggested_micro_batch_fits_and_divides_the_global_batch():
    capacity = 20_000_000 + 5 * MiB
    micro = largest_fitting_micro(MODEL, DDP, capacity, global_batch=64)
    assert micro == 4  # 5 would fit too, but 64 is not a multiple of 5 x 2
    assert estimate(MODEL, dataclasses.replace(DDP, micro=4, accumulation=8)).peak <= capacity
    assert estimate(MODEL, dataclasses.replace(DDP, micro=8, accumulation=4)).peak > capacity
    assert alternatives(MODEL, DDP, capacity) == ["train.activation_checkpointing=true"]


@pytest.mark.parametrize(("text", "size"), [("80GiB", 80 * 1024**3), ("24G", 24 * 1024**3), ("512MiB", 512 * MiB),
                                            ("1.5GB", int(1.5 * 1024**3)), ("4096", 4096)])
def test_sizes(text, size):
    assert parse_size(text) == size


def test_a_size_that_is_not_one_says_how_to_write_it():
    with pytest.raises(ValueError, match="80GiB"):
        parse_size("lots")


def test_slurm_gres_names_the_gpu_types_and_the_table_knows_their_sizes():
    from launcher.plan.memory import device_size
    from launcher.slurm.jobs import gpu_types_of_gres

    assert gpu_types_of_gres("gpu:a100:8(S:0-1),gpu:h100:4\ngpu:8\n(null)") == ["a100", "h100"]
    assert device_size("H100") == 80 * 1024**3 and device_size("NVIDIA-A100-40GB") == 40 * 1024**3
    assert device_size("mystery") is None


def test_a_secret_given_as_an_override_never_reaches_the_trace(monkeypatch, tmp_path):
    from launcher.config.catalog import resolve_recipe_file
    from launcher.plan import memory
    from launcher.plan.prepare import Placement, prepare

    path = resolve_recipe_file("mlp-tiny")
    overrides = ("cluster.env.HF_TOKEN=hf_sekrit123", "model.hidden=32")
    loaded, launch_plan, _ = prepare(path, overrides, Placement(nproc=1, run_dir=str(tmp_path / "run")))
    requests = []

    def stand_in(request):  # the subprocess seam
        requests.append(request)
        return {"failed": "no child in this test"}

    monkeypatch.setattr(memory, "_run_probe", stand_in)
    monkeypatch.setenv("LAUNCHER_CACHE_DIR", str(tmp_path / "cache"))
    verdict = memory.check(path, overrides, loaded, launch_plan, "1GiB")
    assert requests and "hf_sekrit123" not in repr(requests) and "model.hidden=32" in requests[0]["overrides"]
    assert "hf_sekrit123" not in repr(verdict)


# What the child would answer for a 10-parameter model at micro-batches 2 and 16.
TRACED = {"params": 10, "trainable": 10, "param_bytes": 40, "buffer_bytes": 0, "largest_trainable": 10,
          "largest_block_bytes": 40, "activations": {"2": 8, "16": 64}, "with_gradients": {"2": 48, "16": 104},
          "batch_bytes": {"2": 8, "16": 64}, "precision": "fp32"}


def _prepared(tmp_path, *overrides, recipe="mlp-tiny"):
    from launcher.config.catalog import resolve_recipe_file
    from launcher.plan.prepare import Placement, prepare

    path = resolve_recipe_file(recipe)
    loaded, launch_plan, _ = prepare(path, overrides, Placement(nproc=1, run_dir=str(tmp_path / "run")))
    return path, loaded, launch_plan


def test_runs_that_differ_only_where_the_trace_does_not_look_share_one_trace(monkeypatch, tmp_path):
    """The default check traces once per model: a run directory, a step count, a backend or a
    schedule do not start another child; a model or data shape or the precision does."""
    from launcher.plan import memory

    requests = []

    def stand_in(request):  # the subprocess seam: figures a trace would give
        requests.append(request)
        return TRACED

    monkeypatch.setattr(memory, "_run_probe", stand_in)
    monkeypatch.setenv("LAUNCHER_CACHE_DIR", str(tmp_path / "cache"))
    same = [(), ("train.steps=70",), ("backend.name=deepspeed", "backend.zero_stage=2"), ("scheduler.warmup_steps=1",),
            ("checkpoint.every_steps=5", "tracking.mode=offline")]
    for index, overrides in enumerate(same):
        path, loaded, launch_plan = _prepared(tmp_path / str(index), *overrides)
        assert memory.check(path, overrides, loaded, launch_plan, "100GiB").fits
    assert len(requests) == 1
    for index, overrides in enumerate([("model.hidden=32",), ("data.features=8",), ("precision=bf16",)]):
        path, loaded, launch_plan = _prepared(tmp_path / f"other-{index}", *overrides)
        memory.check(path, overrides, loaded, launch_plan, "1GiB")
        assert len(requests) == 2 + index, overrides


def test_a_module_without_a_probe_starts_no_child(monkeypatch, tmp_path):
    from launcher.plan import memory

    def no_child(request):
        raise AssertionError("a child was started")

    monkeypatch.setattr(memory, "_run_probe", no_child)
    module = tmp_path / "plain_module.py"
    source = (Path(__file__).resolve().parents[3] / "launcher" / "recipes" / "mlp_regression.py").read_text()
    module.write_text(source.replace("def memory_probe(", "def _no_memory_probe("))
    path, loaded, launch_plan = _prepared(tmp_path, f"recipe={module}")
    verdict = memory.check(path, (f"recipe={module}",), loaded, launch_plan, None)
    assert verdict.fits and "defines no memory_probe" in verdict.data["not_estimated"]


def _stand_in(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/sh\n" + script)
    (bin_dir / name).chmod(0o755)


def test_on_a_gpu_machine_the_size_is_the_smallest_gpu_nvidia_smi_reports(monkeypatch, tmp_path):
    """nvidia-smi is a stand-in on PATH (the one seam): two GPUs of 81559 and 40960 MiB."""
    from launcher.plan import memory
    from launcher.plan.topology import local_gpu_memory

    _stand_in(tmp_path / "bin", "nvidia-smi", 'case "$1" in\n  -L) echo "GPU 0: A"; echo "GPU 1: B" ;;\n'
                                              '  *) echo 81559; echo 40960 ;;\nesac\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local_gpu_memory() == 40960 * 1024**2
    monkeypatch.setattr(memory, "_run_probe", lambda request: TRACED)
    monkeypatch.setenv("LAUNCHER_CACHE_DIR", str(tmp_path / "cache"))
    path, loaded, launch_plan = _prepared(tmp_path)
    verdict = memory.check(path, (), loaded, launch_plan, None)
    assert verdict.data["capacity_bytes"] == 40960 * 1024**2 and "nvidia-smi" in verdict.data["capacity_source"]
    _stand_in(tmp_path / "bin", "nvidia-smi", "exit 9\n")
    assert local_gpu_memory() is None


def test_slurm_node_memory_is_the_smallest_node_of_the_partition(monkeypatch, tmp_path):
    from launcher.slurm.jobs import partition_node_memory

    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    _stand_in(tmp_path / "bin", "sinfo", "echo 257000; echo '128000+'\n")
    assert partition_node_memory("cpu") == 128000 * 1024**2
    _stand_in(tmp_path / "bin", "sinfo", "echo 1\n")  # RealMemory not configured: Slurm says 1 MB
    assert partition_node_memory("cpu") is None


def test_host_memory_per_node_counts_processes_tensors_offload_and_workers():
    from launcher.plan.memory import (
        AGENT_HOST_BYTES,
        DEEPSPEED_RANK_BYTES,
        MLP_PROBE_BYTES,
        RANK_HOST_BYTES,
        WORKER_HOST_BYTES,
        host_per_node,
    )

    cpu = estimate(MODEL, DDP)
    found = {t.what: t.bytes for t in host_per_node(MODEL, cpu, DDP, nproc=4, workers=2)}
    assert found == {"the launcher and torchrun's agent": AGENT_HOST_BYTES,
                     "4 rank processes (interpreter, torch, libraries)": 4 * RANK_HOST_BYTES,
                     "4 ranks' tensors (the device is host memory)": 4 * cpu.peak,
                     "8 data loader workers (2 a rank)": 8 * (WORKER_HOST_BYTES + 2 * 16000)}
    heavier = dataclasses.replace(MODEL, process_bytes=MLP_PROBE_BYTES + 100 * MiB)  # transformers, say
    found = {t.what: t.bytes for t in host_per_node(heavier, cpu, DDP, nproc=4, workers=0)}
    assert found["4 rank processes (interpreter, torch, libraries)"] == 4 * (RANK_HOST_BYTES + 100 * MiB)
    offload = dataclasses.replace(DDP, backend="deepspeed", zero_stage=3, offload_optimizer=True, gpu=True)
    gpu = estimate(MODEL, offload)
    found = {t.what: t.bytes for t in host_per_node(MODEL, gpu, offload, nproc=8, workers=0)}
    assert gpu.host_peak > 0 and found["8 ranks' offloaded states"] == 8 * gpu.host_peak
    assert not any("tensors" in what for what in found)  # on a GPU they are device memory
    zero = dataclasses.replace(DDP, backend="deepspeed", zero_stage=2)
    found = {t.what: t.bytes for t in host_per_node(MODEL, estimate(MODEL, zero), zero, nproc=2, workers=0)}
    assert found["2 rank processes (interpreter, torch, libraries)"] == 2 * (RANK_HOST_BYTES + DEEPSPEED_RANK_BYTES)
