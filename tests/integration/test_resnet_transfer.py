"""ResNet-18: pretrain on Fashion-MNIST, transfer to MNIST-5k, all through `launcher run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, launch, metrics

# Real training, shortened: the opt-in heavy set, which CI runs. The two-step example's own figures
# (0.786 on Fashion-MNIST; transfer 0.866 against 0.764 from scratch) are figure runs:
# python bench/figures.py --cases resnet-transfer-tiny.
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

TRANSFER = ROOT / "recipes" / "resnet-transfer-tiny.yaml"
PRETRAIN_STEPS = 100


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resnet") / "pretrain"
    result = launch(ROOT / "recipes" / "resnet-pretrain-tiny.yaml", run_dir, f"train.steps={PRETRAIN_STEPS}",
                    f"train.eval_every={PRETRAIN_STEPS}", f"checkpoint.every_steps={PRETRAIN_STEPS}",
                    "data.eval_limit=1000", nproc=2, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return run_dir


def _final_top1(run_dir: Path) -> float:
    return [r for r in metrics(run_dir) if "top1" in r][-1]["top1"]


def test_pretraining_learns_fashion_mnist(pretrained):
    assert _final_top1(pretrained) > 0.5  # 10 classes: chance 0.10 (measured: see PRETRAIN_STEPS' run below)
    assert list((pretrained / "confusion").glob("confusion-step*.png"))
    classes = json.loads((pretrained / "export" / "classes.json").read_text())
    assert classes[0] == "t-shirt" and len(classes) == 10


def test_feature_extraction_on_an_image_folder_trains_only_the_head(pretrained, tmp_path):
    from PIL import Image

    from launcher.data.images import load_split

    tree = tmp_path / "digits"
    for split in ("train", "val"):  # real PNG files: the ImageFolder path users have
        dataset, classes = load_split("package:mnist-5k", split)
        for index in range(0, min(len(dataset), 400 if split == "train" else 100)):
            image, label = dataset[index]
            folder = tree / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"{index}.png")
    run_dir = tmp_path / "frozen"
    result = launch(TRANSFER, run_dir, f"model.weights={pretrained}", "model.mode=feature_extract",
                    f"data.source={tree}", "data.train_limit=0", "train.steps=24", "train.eval_every=0",
                    "scheduler.warmup_steps=2",
                    "optimizer.weight_decay=0.01", nproc=2)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    before = torch.load(pretrained / "export" / "model.pt", weights_only=True)
    after = torch.load(run_dir / "export" / "model.pt", weights_only=True)
    backbone = [k for k in before if not k.startswith("fc.")]
    assert len(backbone) > 100  # weights and BatchNorm buffers (running stats, counters)
    changed = [k for k in backbone if not torch.equal(before[k], after[k])]
    assert changed == []  # bitwise: 0 backbone tensors changed, BatchNorm statistics included
    assert after["fc.weight"].shape == (10, 512)

    from launcher.recipes.resnet_transfer import predict

    files = sorted((tree / "val").rglob("*.png"))
    results = predict(str(run_dir / "export"), [str(f) for f in files])
    correct = sum(r["predictions"][0][0] == Path(r["path"]).parent.name for r in results)
    # 24 head-only steps on a backbone pretrained on Fashion-MNIST: measured 0.54 on these 100 (chance 0.1).
    assert len(results) == len(files) == 100 and correct / len(files) > 0.4, correct / len(files)


def test_deepspeed_bf16_trains_batchnorm_like_accelerate_autocast(tmp_path):
    """DeepSpeed's bf16 mode casts the weights but not BatchNorm's statistics; the first step used to
    fail on the dtypes. The backend runs such models under torch autocast, as Accelerate does."""
    # Small batches: bf16 convolutions are slow on CPUs without bf16 units (12 steps of 64 took 6 min,
    # a step of 8 images 5 s).
    common = ['model.weights=""', "precision=bf16", "train.steps=4", "scheduler.warmup_steps=2",
              "batch.global=8", "batch.micro=4", "data.eval_limit=64", "train.eval_every=0", "train.log_every=1"]
    runs = {"deepspeed": ["backend.name=deepspeed", "backend.zero_stage=2"], "accelerate": ["backend.name=accelerate"]}
    for name, backend in runs.items():
        result = launch(TRANSFER, tmp_path / name, *common, *backend, nproc=2)
        assert result.returncode == 0, name + result.stdout[-2000:] + result.stderr[-3000:]
    losses = {name: [r["loss"] for r in metrics(tmp_path / name) if "loss" in r] for name in runs}
    assert len(losses["deepspeed"]) == len(losses["accelerate"]) == 4
    # Same initial weights, same batches, both bf16 autocast: the first loss agrees to bf16 noise;
    # later ones drift apart (DeepSpeed reduces the conv gradients in bf16), measured <= 5%.
    assert abs(losses["deepspeed"][0] - losses["accelerate"][0]) < 2e-3 * losses["accelerate"][0]
    for ds, acc in zip(losses["deepspeed"], losses["accelerate"], strict=True):
        assert abs(ds - acc) < 0.1 * acc, losses
    exported = torch.load(tmp_path / "deepspeed" / "export" / "model.pt", weights_only=True)
    assert exported["conv1.weight"].dtype == torch.float32  # autocast: weights stay fp32
    assert exported["bn1.running_mean"].dtype == torch.float32


def test_jpeg_store_resumes_exactly_and_device_decoding_trains_the_same_steps(tmp_path):
    """data.jpeg_cache: the compact store, through `launcher run`: stopped at step 3 and resumed, the
    losses equal an uninterrupted run's bitwise; with data.decode: device (here the CPU device:
    torchvision's batched decoder, nvJPEG on a GPU) every step's loss is the host path's."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 4)):
        for label in range(4):
            folder = tmp_path / "photos" / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                coarse = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
                coarse[..., label % 3] //= 3
                Image.fromarray(coarse).resize((160, 120), Image.Resampling.BICUBIC).save(folder / f"{index}.jpg",
                                                                                           quality=90)
    common = [f"data.source={tmp_path / 'photos'}", "data.image_size=32", "data.jpeg_cache=40",
              "data.train_limit=0", "data.eval_limit=0", "batch.global=16", "batch.micro=4", "train.steps=6",
              "train.log_every=1", "train.eval_every=6", "checkpoint.every_steps=3", "scheduler.warmup_steps=2",
              f"data.cache_dir={tmp_path / 'cache'}"]
    whole, split, device = tmp_path / "whole", tmp_path / "split", tmp_path / "device"
    for run_dir, extra in ((whole, []), (split, ["train.stop_after_steps=3"]), (split, []),
                           (device, ["data.decode=device"])):
        result = launch(ROOT / "recipes" / "resnet-pretrain-tiny.yaml", run_dir, *common, *extra, nproc=2)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    losses = {run: [(r["step"], r["loss"]) for r in metrics(run) if "loss" in r] for run in (whole, split, device)}
    assert [step for step, _ in losses[whole]] == list(range(1, 7))
    assert losses[split] == losses[whole]  # bitwise, across the resume at step 3
    assert losses[device] == losses[whole]  # the same crops from the same bytes, decoded elsewhere
    stores = list((tmp_path / "cache").glob("jpeg-*"))
    assert len(stores) == 2  # train and val, built once and reused by the later runs
    summary = json.loads((stores[0] / "done").read_text())
    assert summary["bytes"] < summary["source_bytes"]
