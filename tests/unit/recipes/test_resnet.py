"""ResNet transfer: head shape, frozen BatchNorm, discriminative LRs and unfreezing in the optimizer."""

from __future__ import annotations

import pytest
import torch

from launcher.backends.optim import build_optimizer, set_lr
from launcher.config.schema import OptimizerConfig
from launcher.recipes.resnet_transfer import DataConfig, ModelConfig, build_classifier, optimizer_groups


class _Recipe:
    def __init__(self, model: ModelConfig, weight_decay: float = 1e-4) -> None:
        self.model = model
        self.data = DataConfig()
        self.optimizer = OptimizerConfig(name="sgd", lr=0.1, weight_decay=weight_decay)


@pytest.mark.parametrize("arch,features", [("resnet18", 512), ("resnet50", 2048)])
def test_head_is_replaced_for_the_new_classes(arch, features):
    donor = build_classifier(ModelConfig(arch=arch), 1000, None).resnet.state_dict()
    model = build_classifier(ModelConfig(arch=arch), 7, donor)
    assert model.resnet.fc.out_features == 7 and model.resnet.fc.in_features == features
    assert torch.equal(model.resnet.conv1.weight, donor["conv1.weight"])  # backbone loaded


def test_feature_extraction_freezes_backbone_and_batchnorm_statistics():
    model = build_classifier(ModelConfig(mode="feature_extract"), 10, None).train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["resnet.fc.weight", "resnet.fc.bias"]
    before = model.resnet.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) * 3 + 1)  # a training-mode forward
    assert model.training and not model.resnet.bn1.training
    assert torch.equal(model.resnet.bn1.running_mean, before)
    finetune = build_classifier(ModelConfig(mode="finetune"), 10, None).train()
    finetune(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(finetune.resnet.bn1.running_mean, before)  # the control moves


def test_discriminative_lrs_and_unfreezing_land_in_the_optimizer():
    cfg = ModelConfig(backbone_lr_factor=0.1, unfreeze_steps=[0, 10, 20, 30])
    model = build_classifier(cfg, 10, None)
    groups = optimizer_groups(model, _Recipe(cfg))
    optimizer = build_optimizer(groups, OptimizerConfig(name="sgd", lr=0.1))
    stages = {g["stage"] for g in optimizer.param_groups}
    assert stages == {"head", "layer4", "layer3", "layer2", "layer1"}
    counted = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert counted == sum(p.numel() for p in model.parameters())
    set_lr(optimizer, 0.1, step=15)
    lrs = {}
    for group in optimizer.param_groups:
        lrs.setdefault(group["stage"], set()).add(round(group["lr"], 10))
    assert lrs == {"head": {0.1}, "layer4": {0.01}, "layer3": {0.01}, "layer2": {0.0}, "layer1": {0.0}}
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups if g["params"][0].ndim == 1)


def _image_tree(root, sizes):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for index, (width, height, mode, suffix) in enumerate(sizes):
        pixels = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC).convert(mode)
        folder = root / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}.{suffix}"
        image.save(path, quality=95) if suffix == "jpg" else image.save(path)
        files.append((path, index % 2))
    return files


SIZES = [(300, 200, "RGB", "jpg"), (120, 160, "L", "png"), (640, 480, "RGB", "jpg"), (64, 64, "RGB", "jpg")]


def test_decoded_square_matches_a_full_decode_then_resize_and_centre_crop(tmp_path):
    import torchvision.transforms.v2.functional as F

    from launcher.data.decode import read_image
    from launcher.data.decoded import decode_square

    for path, _ in _image_tree(tmp_path, SIZES):
        ours = torch.from_numpy(decode_square(path, 64)).permute(2, 0, 1)
        reference = F.center_crop(F.resize(read_image(path), [64], antialias=True), [64, 64])
        assert ours.shape == reference.shape == (3, 64, 64)
        # JPEG draft-mode decoding at a reduced scale and Pillow's resampling differ slightly.
        assert (ours.float() - reference.float()).abs().mean() < 6, path


def test_decoded_cache_holds_every_image_and_label_and_pickles_without_the_array(tmp_path):
    import pickle

    from launcher.data.decoded import DecodedImages, decode_square, write_decoded

    files = _image_tree(tmp_path / "tree", SIZES * 3)
    out = tmp_path / "cache"
    out.mkdir()
    summary = write_decoded(files, 48, out, workers=2)  # a real process pool writing one memmap
    (out / "done").write_text(__import__("json").dumps(summary))
    decoded = DecodedImages(out)
    assert len(decoded) == len(files) == summary["images"]
    for index, (path, label) in enumerate(files):
        image, got_label = decoded[index]
        assert got_label == label and torch.equal(image, torch.from_numpy(decode_square(path, 48)).permute(2, 0, 1))
    assert len(pickle.dumps(decoded)) < 4096  # DataLoader workers reopen the map, no array copy


def test_decoded_cache_is_built_once_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch, capsys):
    import os

    from launcher.data.images import load_split
    from launcher.recipe_module import RunContext
    from launcher.recipes.resnet_transfer import _stored

    for split in ("train", "val"):
        _image_tree(tmp_path / "tree" / split, SIZES)
    raw, _ = load_split(str(tmp_path / "tree"), "train")
    cfg = DataConfig(source=str(tmp_path / "tree"), image_size=32, decoded_cache=40,
                     cache_dir=str(tmp_path / "cache"))
    ctx = RunContext(0, 0, 1, torch.device("cpu"), str(tmp_path), lambda: None)
    first = _stored(raw, cfg, ctx)
    again = _stored(raw, cfg, ctx)
    assert first.directory == again.directory and "reusing" in capsys.readouterr().out
    path = raw.files[0][0]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert _stored(raw, cfg, ctx).directory != first.directory  # a changed file: a new cache


def test_jpeg_store_keeps_every_picture_small_with_its_short_side_and_label(tmp_path):
    import pickle

    import numpy as np

    from launcher.data.decode import read_image
    from launcher.data.jpeg_store import JpegStore, write_jpeg_store

    files = _image_tree(tmp_path / "tree", SIZES * 3)
    out = tmp_path / "store"
    out.mkdir()
    summary = write_jpeg_store(files, 96, 90, out, workers=2)  # a real process pool, results kept in order
    (out / "done").write_text(__import__("json").dumps(summary))
    store = JpegStore(out)
    assert len(store) == len(files) == summary["images"]
    for index, (path, label) in enumerate(files):
        image, got_label = store[index]
        original = read_image(path)
        height, width = original.shape[1:]
        short = min(96, height, width)  # resized down to 96, never enlarged (the 64 x 64 stays)
        expected = (round(height * short / min(height, width)), round(width * short / min(height, width)))
        assert got_label == label and image.dtype == torch.uint8 and tuple(image.shape) == (3, *expected), path
        # The same picture, re-encoded: equal at a coarse scale (the fine detail of these test images
        # is beyond what 96 px can hold, where resampling filters differ).
        coarse = [torch.nn.functional.adaptive_avg_pool2d(x[None].float(), 8)[0] for x in (image, original)]
        assert (coarse[0] - coarse[1]).abs().mean() < 4, path
    assert summary["bytes_per_image"] == np.diff(store.offsets).mean()
    assert summary["bytes"] < summary["source_bytes"]
    assert len(pickle.dumps(store)) < 4096  # DataLoader workers reopen the map, no bytes copied


def test_crops_from_the_jpeg_store_are_the_same_at_the_same_position_for_exact_resume(tmp_path):
    import pickle

    from launcher.data.images import load_split
    from launcher.recipe_module import RunContext
    from launcher.recipes.resnet_transfer import Augmented, _stored

    for split in ("train", "val"):
        _image_tree(tmp_path / "tree" / split, SIZES)
    raw, _ = load_split(str(tmp_path / "tree"), "train")
    cfg = DataConfig(source=str(tmp_path / "tree"), image_size=48, jpeg_cache=64, cache_dir=str(tmp_path / "c"))
    ctx = RunContext(0, 0, 1, torch.device("cpu"), str(tmp_path), lambda: None)
    store = _stored(raw, cfg, ctx)
    assert store.directory.name.startswith("jpeg-")
    first = Augmented(store, cfg, train=True)
    resumed = pickle.loads(pickle.dumps(Augmented(_stored(raw, cfg, ctx), cfg, train=True)))  # a worker's copy
    for position in range(12):
        a, b = first.at(position % len(store), position), resumed.at(position % len(store), position)
        assert a["image"].shape == (3, 48, 48) and torch.equal(a["image"], b["image"]), position
    assert not torch.equal(first.at(0, 0)["image"], first.at(0, 4)["image"])  # crops follow the position


def test_image_stores_are_checked_before_launch():
    assert [k for k, *_ in DataConfig(image_size=224, jpeg_cache=128).check()] == ["jpeg_cache"]
    both = DataConfig(jpeg_cache=256, decoded_cache=256).check()
    assert [k for k, *_ in both] == ["decoded_cache"] and "keep one" in both[0][2]
    assert [k for k, *_ in DataConfig(jpeg_quality=30).check()] == ["jpeg_quality"]


def test_device_decoding_takes_the_same_crops_as_the_loader_from_the_same_bytes(tmp_path):
    """data.decode: device on a CPU device: torchvision's batched decode_jpeg (nvJPEG on CUDA) gets
    the store's bytes and the loader's boxes, and gives the crops the host path gives."""
    from torch.utils.data import DataLoader

    from launcher.data.device_decode import EncodedImages
    from launcher.data.images import load_split
    from launcher.recipe_module import RunContext
    from launcher.recipes.resnet_transfer import Augmented, _stored, collate
    from launcher.runtime.device import to_device

    for split in ("train", "val"):
        _image_tree(tmp_path / "tree" / split, SIZES * 2)
    raw, _ = load_split(str(tmp_path / "tree"), "train")
    host_cfg = DataConfig(source=str(tmp_path / "tree"), image_size=48, jpeg_cache=64, cache_dir=str(tmp_path / "c"))
    device_cfg = DataConfig(**{**host_cfg.__dict__, "decode": "device"})
    ctx = RunContext(0, 0, 1, torch.device("cpu"), str(tmp_path), lambda: None)
    store = _stored(raw, host_cfg, ctx)
    for train in (True, False):
        host = [Augmented(store, host_cfg, train).at(i, 100 + i) for i in range(len(store))]
        shipped = [Augmented(store, device_cfg, train).at(i, 100 + i) for i in range(len(store))]
        batch = collate(shipped, device_cfg)
        assert isinstance(batch["encoded"], EncodedImages) and to_device(batch, torch.device("cpu")) is batch
        assert sum(s["jpeg"].numel() for s in shipped) == store.offsets[-1]  # bytes, not pixels, cross over
        from launcher.data.device_decode import decode_crops

        decoded = decode_crops(batch["encoded"], torch.device("cpu"))
        expected = torch.stack([h["image"] for h in host])
        assert decoded.shape == expected.shape == (len(store), 3, 48, 48)
        # The same boxes and flips, and the same decoder: the same pixels.
        assert torch.equal(decoded, expected), (train, (decoded.float() - expected.float()).abs().mean())
        assert torch.equal(batch["label"], torch.tensor([h["label"] for h in host]))
    # Through real DataLoader workers (the bytes travel in shared memory, the boxes pickled).
    loader = DataLoader(Augmented(store, device_cfg, True), batch_size=4, num_workers=2,
                        collate_fn=lambda s: collate(s, device_cfg))
    assert sum(len(b["encoded"].data) for b in loader) == len(store)


def test_device_decoding_needs_the_jpeg_store():
    problems = DataConfig(decode="device").check()
    assert [k for k, *_ in problems] == ["decode"] and "jpeg_cache" in problems[0][2]
    assert [k for k, *_ in DataConfig(decode="gpu").check()] == ["decode"]
