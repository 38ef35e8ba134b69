"""The memory estimate against the bytes a real run holds (launcher.runtime.live_bytes counts
every tensor allocation of the training steps, LAUNCHER_MEMORY_TRACE), and the refusal of a job
that does not fit, with a micro-batch that then does."""

from __future__ import annotations

import json
import re
import subprocess

from tests.helpers import launch, launcher_env

SHAPE = ["model.hidden=512", "model.layers=2", "data.features=512", "batch.global=2048", "train.steps=3",
         "scheduler.warmup_steps=0", "train.eval_every=0", "checkpoint.every_steps=0"]


def _plan_memory(tmp_path, *overrides, nproc=1) -> dict:
    done = launch("mlp-tiny", tmp_path / "plan", *SHAPE, *overrides, "--memory", "--json", nproc=nproc,
                  command="plan")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["memory"]


def _measured_peak(tmp_path, name, *overrides, nproc=1) -> int:
    trace = tmp_path / f"{name}-trace"
    trace.mkdir()
    done = launch("mlp-tiny", tmp_path / name, *SHAPE, *overrides, nproc=nproc,
                  env=launcher_env(LAUNCHER_MEMORY_TRACE=str(trace)))
    assert done.returncode == 0, done.stderr[-3000:]
    return max(json.loads(path.read_text())["peak_bytes"] for path in trace.glob("rank-*.json"))


def test_the_ddp_estimate_is_within_ten_percent_of_the_measured_peak(tmp_path):
    predicted = _plan_memory(tmp_path, "batch.micro=256", nproc=2)["peak_bytes"]
    measured = _measured_peak(tmp_path, "ddp", "batch.micro=256", nproc=2)  # 4 micro-steps a step
    assert abs(predicted - measured) <= 0.10 * measured, (predicted, measured)


def test_a_job_that_does_not_fit_is_refused_with_a_micro_batch_that_then_fits(tmp_path):
    done = launch("mlp-tiny", tmp_path / "refused", *SHAPE, "batch.micro=2048", "--device-memory", "22MiB")
    assert done.returncode == 2, done.stderr
    assert "batch.micro" in done.stderr and "--no-memory-check" in done.stderr
    assert not (tmp_path / "refused").exists()  # nothing written
    micro = int(re.search(r"batch\.micro=(\d+) \(accumulation (\d+)", done.stderr).group(1))
    assert 2048 % micro == 0 and micro < 2048
    measured = _measured_peak(tmp_path, "suggested", f"batch.micro={micro}")
    assert measured <= 22 * 1024**2, measured
    forced = launch("mlp-tiny", tmp_path / "forced", *SHAPE, "batch.micro=2048", "--device-memory", "22MiB",
                    "--no-memory-check")
    assert forced.returncode == 0, forced.stderr[-2000:]


def test_a_size_that_is_not_one_is_refused_before_anything_starts(tmp_path):
    done = launch("mlp-tiny", tmp_path / "run", "--device-memory", "lots")
    assert done.returncode == 2 and "80GiB" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_submit_refuses_before_the_queue_from_the_partitions_gpu_type(tmp_path):
    """sinfo (a stand-in on PATH: the one seam) says the partition has T4s (16 GiB): GPT-2 at
    16 x 1024 tokens a micro-batch needs tens of GiB of activations, so the job is refused, with
    the micro-batch that would fit, and no sbatch is run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sinfo = bin_dir / "sinfo"
    sinfo.write_text("#!/bin/sh\necho 'gpu:t4:4(S:0)'\n")
    sinfo.chmod(0o755)
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-ran\necho 'Submitted batch job 1'\n")
    sbatch.chmod(0o755)
    env = launcher_env(PATH=f"{bin_dir}:{launcher_env()['PATH']}")
    argv = ["launcher", "submit", "gpt2-finetune", "model.init=scratch", "model.size=gpt2",
            "data.corpus=package:austen", "data.vocab_size=50257", "data.max_seq_len=1024",
            "backend.name=deepspeed", "backend.zero_stage=0",
            "batch.global=128", "batch.micro=16", "--nodes", "1", "--gpus-per-node", "8", "--partition", "gpu",
            "--run-dir", str(tmp_path / "job")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    assert "t4, the partition's GPU" in done.stderr, done.stderr
    micro = int(re.search(r"batch\.micro=(\d+) \(accumulation", done.stderr).group(1))
    assert micro < 16 and 128 % (micro * 8) == 0
    assert not (tmp_path / "sbatch-ran").exists() and not (tmp_path / "job").exists()


def test_without_a_size_run_checks_its_share_of_this_machines_memory(tmp_path):
    """No flag: the check is on by default. One 100,000 x 100,000 layer is 40 GB of fp32 weights,
    with its gradient and AdamW states 160 GB a rank: more than any share of this machine (the
    refusal names it), refused before the run directory exists."""
    done = launch("mlp-tiny", tmp_path / "huge", "model.hidden=100000", "model.layers=2", nproc=2)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "this machine's memory / 2 processes" in done.stderr and "Traceback" not in done.stderr
    assert "offload" in done.stderr or "zero_stage" in done.stderr or "batch.micro" in done.stderr
    assert not (tmp_path / "huge").exists()


def _submit_to_cpu_nodes(tmp_path, node_mb: int, name: str, *overrides) -> subprocess.CompletedProcess:
    """`launcher submit` of the MLP, two processes a node, where sinfo (a stand-in) says the
    partition's nodes have node_mb MB and sbatch (a stand-in) leaves a mark."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sinfo").write_text(f"#!/bin/sh\necho {node_mb}\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-ran\necho 7\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = launcher_env(PATH=f"{bin_dir}:{launcher_env()['PATH']}")
    argv = ["launcher", "submit", "mlp-tiny", *overrides, "--nodes", "1", "--nproc", "2", "--partition", "cpu",
            "--run-dir", str(tmp_path / name)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_submit_to_a_partition_without_gpus_checks_its_nodes_memory(tmp_path):
    """Nodes of 1000 MB: two processes get 500 MB each, and an MLP of 4 x 4096^2 weights (268 MB in
    fp32, about 1 GB with its gradients, DDP buckets and AdamW states) does not fit; 16 GB nodes
    do, and then sbatch runs."""
    done = _submit_to_cpu_nodes(tmp_path, 1000, "small", "model.hidden=4096", "model.layers=4")
    assert done.returncode == 2, done.stderr
    assert "the partition's node memory / 2 processes" in done.stderr
    assert not (tmp_path / "sbatch-ran").exists() and not (tmp_path / "small").exists()
    done = _submit_to_cpu_nodes(tmp_path, 16000, "large", "model.hidden=4096", "model.layers=4")
    assert done.returncode == 0 and (tmp_path / "sbatch-ran").exists(), done.stderr


def test_a_node_whose_processes_do_not_fit_beside_the_tensors_is_refused(tmp_path):
    """4 x 2048^2 weights: about 0.35 GB a rank, under the 500 MB share of a 1000 MB node, but two
    ranks' tensors, their processes and torchrun's agent are more than the node: refused, naming
    host memory per node."""
    done = _submit_to_cpu_nodes(tmp_path, 1000, "job", "model.hidden=2048", "model.layers=4")
    assert done.returncode == 2, done.stderr
    assert "of host memory per node, more than" in done.stderr and "cluster.nproc_per_node" in done.stderr
    assert not (tmp_path / "sbatch-ran").exists()


def test_a_micro_batch_the_model_cannot_train_at_is_refused_before_the_run(tmp_path):
    """ResNet's BatchNorm cannot train on one sample a rank: the trace at micro 1 fails in the
    model while micro 2 traces, and the run is refused with that error and micro 2, instead of
    starting a job whose first step would raise the same ValueError."""
    done = launch("resnet-transfer-tiny", tmp_path / "one", 'model.weights=""', "batch.micro=1", "batch.global=4",
                  "train.steps=2", "scheduler.warmup_steps=0", "train.eval_every=0", nproc=2)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot train at batch.micro=1" in done.stderr and "more than 1 value per channel" in done.stderr
    assert "batch.micro=2 (accumulation 1 keeps batch.global 4)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "one").exists()
