"""ResNet transfer learning with torchvision (ResNet-18/34/50/101/152).

    launcher run recipes/resnet-pretrain-tiny.yaml --nproc 2    # ResNet-18 on Fashion-MNIST (CPU)
    launcher run recipes/resnet-transfer-tiny.yaml --nproc 2    # ... transferred to MNIST digits
    launcher run recipes/resnet50-transfer.yaml --nproc 8       # ResNet-50 at 224 px on a GPU node
    python -m launcher.recipes.resnet_transfer predict runs/resnet-transfer-tiny/export a.png b.jpg

Starting weights (`model.weights`): a local state-dict file, a run directory of this project (its
export), or a torchvision weights name such as `ResNet50_Weights.IMAGENET1K_V2` (used when cached
or online). The final `fc` is replaced for the new classes. Modes: `finetune` (everything trains;
`backbone_lr_factor` gives the backbone a fraction of the head's LR; `unfreeze_steps` unfreezes
layer4, layer3, layer2, then layer1 + stem at those optimizer steps) or `feature_extract` (the
backbone is frozen, BatchNorm included: its statistics do not move; only the head trains).

Augmentation (random resized crop, optional flip) draws from an RNG keyed to the sample's
position in the global data stream, so a resumed run sees exactly the same crops.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from launcher.data.image_files import folder_image_problems
from launcher.data.paths import path_problems
from launcher.rundir.layout import RunDir

DESCRIPTION = "ResNet transfer learning (torchvision): fine-tune, feature extraction, discriminative LRs"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STAGES = ("layer4", "layer3", "layer2", "layer1")  # unfreezing order; the stem joins layer1


# Keys that change no checkpoint's meaning: a run may continue with other values (run.json).
IDENTITY_EXEMPT = frozenset({"data.workers", "data.cache_dir"})

@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet18"
    weights: str = ""  # "": random init; a .pt/.pth state dict; a run dir; a torchvision weights name
    mode: Literal["finetune", "feature_extract"] = "finetune"
    backbone_lr_factor: float = 1.0  # discriminative LRs: backbone LR = head LR x factor
    unfreeze_steps: list[int] = field(default_factory=list)  # up to 4 steps: layer4, layer3, layer2, layer1+stem

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if not 0 <= self.backbone_lr_factor <= 10:
            out.append(("backbone_lr_factor", "must be in [0, 10]", "e.g. 0.1"))
        if len(self.unfreeze_steps) > 4 or any(s < 0 for s in self.unfreeze_steps):
            out.append(("unfreeze_steps", "at most 4 non-negative steps", "e.g. [0, 100, 200, 300]"))
        if self.unfreeze_steps and self.mode == "feature_extract":
            out.append(("unfreeze_steps", "feature_extract keeps the backbone frozen", "use mode: finetune"))
        return out


@dataclass(frozen=True)
class DataConfig:
    source: str = "package:mnist-5k"  # ImageFolder tree, hf:DIR, package:fashion-mnist, package:mnist-5k
    image_size: int = 224
    crop_scale: float = 0.35  # smallest crop area of RandomResizedCrop
    flip: bool = True  # horizontal flips (off for digits and text)
    eval_resize: float = 1.14  # eval: resize to image_size x this, then center-crop image_size
    train_limit: int = 0  # use only the first N training images (0: all)
    eval_limit: int = 0
    workers: int = 0  # DataLoader worker processes
    # Image folders, one of two one-time stores (0: decode each original file at every access):
    # jpeg_cache: S re-encodes each picture with its short side at S (JPEG, ~20-40 KB at 256) and
    # crops from it; decoded_cache: S keeps uint8 S x S centre squares (3 x S x S bytes, no decode).
    jpeg_cache: int = 0
    jpeg_quality: int = 90
    # host: loader processes decode and crop. device: the loader ships the JPEG store's bytes and
    # crop boxes, and the training device decodes the micro-batch (nvJPEG on CUDA, batched).
    decode: str = "host"
    decoded_cache: int = 0
    cache_dir: str = ""  # default $LAUNCHER_CACHE_DIR or ~/.cache/launcher
    seed: int = 0

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if not 16 <= self.image_size <= 1024:
            out.append(("image_size", "must be in 16..1024", "224 for ImageNet weights"))
        for key in ("jpeg_cache", "decoded_cache"):
            if 0 < getattr(self, key) < self.image_size:
                out.append((key, f"must be 0 or at least image_size ({self.image_size})", "256 for image_size 224"))
        if self.jpeg_cache and self.decoded_cache:
            out.append(("decoded_cache", "jpeg_cache and decoded_cache are two stores of the same images",
                        "keep one: jpeg_cache (compact) or decoded_cache (no decoding, 3 x S x S bytes each)"))
        if self.decode not in ("host", "device"):
            out.append(("decode", f"must be host or device, got {self.decode!r}",
                        "device decodes on the GPU (nvJPEG); host in the loader processes"))
        elif self.decode == "device" and not self.jpeg_cache:
            out.append(("decode", "device decoding reads the JPEG store", "set data.jpeg_cache: 256 as well"))
        if not 50 <= self.jpeg_quality <= 100:
            out.append(("jpeg_quality", "must be in 50..100", "90 keeps re-encoding losses invisible"))
        if not 0.05 <= self.crop_scale <= 1:
            out.append(("crop_scale", "must be in [0.05, 1]", "0.08 as torchvision, larger for small images"))
        out += path_problems(source=self.source)  # found before launch, not in the ranks
        if not out and os.path.isdir(os.path.join(self.source, "train")):
            bad = folder_image_problems(self.source)
            if bad:
                out.append(("source", f"{len(bad)}{'+' if len(bad) >= 20 else ''} image file(s) cannot be read: "
                            + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""),
                            "remove or replace them (a re-download, or `convert`), then run again"))
        return out


def tokens_per_sample(recipe) -> None:
    return None


def build(recipe, ctx):
    import torch

    from launcher.data.images import load_split
    from launcher.recipe_module import Task

    cfg: DataConfig = recipe.data
    train_raw, classes = load_split(cfg.source, "train", cfg.seed)
    eval_raw, eval_classes = load_split(cfg.source, "val", cfg.seed)
    if eval_classes != classes:
        raise ValueError(f"data.source: train classes {classes} differ from val classes {eval_classes}")
    if cfg.decoded_cache or cfg.jpeg_cache:
        train_raw, eval_raw = (_stored(raw, cfg, ctx) for raw in (train_raw, eval_raw))
    mean, std, backbone_state = _starting_point(recipe.model)
    model = build_classifier(recipe.model, len(classes), backbone_state)
    channels_last = ctx.device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train = Augmented(_limit(train_raw, cfg.train_limit), cfg, train=True)
    evaluation = Augmented(_limit(eval_raw, cfg.eval_limit), cfg, train=False)
    normalized = _normalizer(mean, std, ctx.device, channels_last)
    loss = _classification_loss(normalized)

    def eval_artifacts(tensors, step, run_dir):
        path = os.path.join(run_dir, "confusion", f"confusion-step{step:08d}.png")
        draw_confusion(tensors["confusion"], classes, path)
        return [("confusion_matrix", path)]

    flops = _forward_flops(recipe.model.arch, cfg.image_size)
    return Task(
        model=model,
        train_data=train,
        eval_data=evaluation,
        collate=functools.partial(collate, cfg=cfg),
        loss=loss,
        count_targets=lambda batch: len(batch["label"]),
        evaluate=_evaluator(classes, normalized),
        eval_artifacts=eval_artifacts,
        param_groups=optimizer_groups(model, recipe),
        flops_per_sample=3 * flops,
        export=_exporter(recipe, classes, mean, std),
        loader_workers=cfg.workers,
    )


def _classification_loss(normalized):
    """loss(model, batch) -> (summed cross-entropy, the batch's size) on the normalised images."""
    import torch

    def loss(model, batch):
        logits = model(normalized(batch))
        # The count is filled on the device (a kernel): torch.tensor(n, device=...) would copy it from
        # the host and wait for the GPU, every micro-step.
        return torch.nn.functional.cross_entropy(logits.float(), batch["label"], reduction="sum"), \
            torch.full((), len(batch["label"]), device=logits.device)

    return loss


def _normalizer(mean, std, device, channels_last: bool):
    """The loader hands over uint8 crops: a quarter of float32's bytes to copy to the device, and
    no float pass on the host. Normalising there costs the GPU next to nothing."""
    import torch

    scale = torch.tensor(std, device=device).mul(255).reciprocal().view(1, 3, 1, 1)
    shift = torch.tensor(mean, device=device).div(torch.tensor(std, device=device)).view(1, 3, 1, 1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def normalized(batch):
        """The batch's uint8 N x 3 x H x W images (decoded here first with data.decode: device) ->
        (x / 255 - mean) / std, as float32."""
        if "encoded" in batch:
            from launcher.data.device_decode import decode_crops

            images = decode_crops(batch["encoded"], device)
        else:
            images = batch["image"]
        return torch.addcmul(-shift, images.contiguous(memory_format=memory_format).float(), scale)

    return normalized


def _evaluator(classes: list[str], normalized):
    """Top-1, top-5 and per-class accuracy, and the confusion matrix (summed over ranks)."""
    import torch

    def evaluate(model, batches):
        n = len(classes)
        confusion = torch.zeros(n, n, dtype=torch.float64, device=batches[0]["label"].device)
        top5 = torch.zeros((), dtype=torch.float64, device=confusion.device)
        for batch in batches:
            logits = model(normalized(batch))
            labels = batch["label"]
            confusion.index_put_((labels, logits.argmax(-1)), torch.ones_like(labels, dtype=torch.float64),
                                 accumulate=True)
            k = min(5, n)
            top5 += (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).sum()
        total = confusion.sum()
        metrics = {"top1": (confusion.diagonal().sum(), total), "top5": (top5, total)}
        for index, name in enumerate(classes):
            metrics[f"class_accuracy/{name}"] = (confusion[index, index], confusion[index].sum())
        metrics["confusion"] = confusion  # a tensor: summed over ranks, then drawn by eval_artifacts
        return metrics

    return evaluate


def _exporter(recipe, classes: list[str], mean, std):
    """A torchvision state dict, the class names and the eval transforms: what `predict` needs."""
    import torch

    cfg: DataConfig = recipe.data

    def export(model, state, directory):
        resnet_state = {k[len("resnet."):]: v for k, v in state.items() if k.startswith("resnet.")}
        torch.save(resnet_state, os.path.join(directory, "model.pt"))
        Path(directory, "classes.json").write_text(json.dumps(classes))
        Path(directory, "transforms.json").write_text(json.dumps({
            "arch": recipe.model.arch, "image_size": cfg.image_size, "eval_resize": cfg.eval_resize,
            "mean": list(mean), "std": list(std), "channels": 3,
            "eval": f"resize({round(cfg.image_size * cfg.eval_resize)}) -> center_crop({cfg.image_size}) "
                    "-> float/255 -> normalize(mean, std)"}, indent=1))

    return export


# ---------------------------------------------------------------------------------------------
# Model


def build_classifier(cfg: ModelConfig, num_classes: int, backbone_state: dict | None):
    import torch
    import torchvision
    from torch import nn

    resnet = torchvision.models.get_model(cfg.arch, weights=None)
    if backbone_state is not None:
        backbone = {k: v for k, v in backbone_state.items() if not k.startswith("fc.")}
        missing, unexpected = resnet.load_state_dict(backbone, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise ValueError(f"model.weights do not fit {cfg.arch}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    resnet.fc = nn.Linear(resnet.fc.in_features, num_classes)
    frozen = cfg.mode == "feature_extract"

    class Classifier(nn.Module):
        """The ResNet, with BatchNorm of a frozen backbone kept in eval mode whatever train() says."""

        def __init__(self) -> None:
            super().__init__()
            self.resnet = resnet
            if frozen:
                for name, parameter in resnet.named_parameters():
                    parameter.requires_grad_(name.startswith("fc."))

        def train(self, mode: bool = True):
            super().train(mode)
            if frozen:
                for module in self.resnet.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
            return self

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.resnet(images)

    return Classifier().train()


def optimizer_groups(model, recipe) -> list[dict]:
    """Head at the scheduled LR; backbone stages at LR x backbone_lr_factor, each starting at its
    unfreeze step (LR 0 before it). Biases and norm weights get no weight decay."""
    from launcher.backends.optim import param_groups_of

    cfg: ModelConfig = recipe.model
    opt = recipe.optimizer
    named = dict(model.resnet.named_parameters())
    stage_of = {}
    for name in named:
        prefix = name.split(".")[0]
        stage_of[name] = "head" if prefix == "fc" else (prefix if prefix in STAGES else "layer1")
    unfreeze = dict(zip(STAGES, cfg.unfreeze_steps, strict=False))
    groups = []
    for stage in ("head", *STAGES):
        params = [(n, p) for n, p in named.items() if stage_of[n] == stage and p.requires_grad]
        if not params:
            continue
        scale = 1.0 if stage == "head" else cfg.backbone_lr_factor
        groups += param_groups_of(params, opt.weight_decay, opt.decay_norm_and_bias, lr_scale=scale,
                                  unfreeze_step=unfreeze.get(stage, 0), stage=stage)
    return groups


def _starting_point(cfg: ModelConfig):
    """(mean, std, backbone state dict or None) from model.weights."""
    import torch

    if not cfg.weights:
        return IMAGENET_MEAN, IMAGENET_STD, None
    path = Path(cfg.weights)
    if (RunDir(path).export / "model.pt").is_file():  # a launcher run directory
        path = RunDir(path).export
    if path.is_dir() and (path / "model.pt").is_file():
        transforms = json.loads((path / "transforms.json").read_text()) if (path / "transforms.json").exists() else {}
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        return tuple(transforms.get("mean", IMAGENET_MEAN)), tuple(transforms.get("std", IMAGENET_STD)), state
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        return IMAGENET_MEAN, IMAGENET_STD, state.get("state_dict", state)
    if "_Weights." in cfg.weights:
        import torchvision

        weights = torchvision.models.get_weight(cfg.weights)
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:  # noqa: BLE001 - offline and not cached
            raise ValueError(f"model.weights={cfg.weights}: not in the torch hub cache and not downloadable "
                             f"here ({exc}); download it where there is internet, or give a local state dict") from None
        preset = weights.transforms()
        return tuple(preset.mean), tuple(preset.std), state
    raise ValueError(f"model.weights={cfg.weights}: not a file, a run directory or a torchvision weights name")


def _forward_flops(arch: str, size: int) -> float:
    # torchvision's published GFLOPS at 224 px, scaled by area (convolutions dominate).
    gflops = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.8, "resnet152": 11.51}[arch]
    return 2 * gflops * 1e9 * (size / 224) ** 2  # torchvision counts multiply-adds


# ---------------------------------------------------------------------------------------------
# Data


def _stored(raw, cfg: DataConfig, ctx):
    """An image folder's one-time store, JPEG or decoded (built by one process per node; the others
    wait)."""
    from launcher.data.cache import build_once, cache_root
    from launcher.data.images import FolderImages

    if not isinstance(raw, FolderImages):
        return raw  # packaged and hf: sets are decoded in memory already
    if cfg.jpeg_cache:
        from launcher.data.jpeg_store import JpegStore, cache_key, write_jpeg_store

        cache = cache_root(cfg.cache_dir) / f"jpeg-{cache_key(raw.files, cfg.jpeg_cache, cfg.jpeg_quality)}"
        build = lambda tmp: write_jpeg_store(raw.files, cfg.jpeg_cache, cfg.jpeg_quality, tmp)  # noqa: E731
        opened = JpegStore
    else:
        from launcher.data.decoded import DecodedImages, cache_key, write_decoded

        cache = cache_root(cfg.cache_dir) / f"images-{cache_key(raw.files, cfg.decoded_cache)}"
        build = lambda tmp: write_decoded(raw.files, cfg.decoded_cache, tmp)  # noqa: E731
        opened = DecodedImages
    if ctx.local_rank == 0:
        build_once(cache, "resnet_transfer", build)
    ctx.barrier()
    return opened(cache)


def _limit(dataset, limit: int):
    if not limit or limit >= len(dataset):
        return dataset
    from torch.utils.data import Subset

    return Subset(dataset, range(limit))


class Augmented:
    """uint8 images -> uint8 3 x size x size crops; train crops/flips keyed to the stream position.
    Normalisation happens on the device (build's `normalized`)."""

    def __init__(self, data, cfg: DataConfig, train: bool) -> None:
        self.data, self.cfg, self.train = data, cfg, train

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return self.at(index, index)

    def at(self, index: int, position: int) -> dict:
        import torchvision.transforms.v2.functional as F

        from launcher.data.crops import resized_crop

        if self.cfg.decode == "device":
            return self._encoded(index, position)
        image, label = self.data[index]
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        size = self.cfg.image_size
        if self.train:
            box, flip = self._draw(image.shape[1], image.shape[2], position)
            image = resized_crop(image, box, size, flip)  # channels-last: see launcher.data.crops
        else:
            image = F.center_crop(F.resize(image, [round(size * self.cfg.eval_resize)], antialias=True), [size, size])
        return {"image": image, "label": label}

    def _draw(self, height: int, width: int, position: int) -> tuple[tuple[int, int, int, int], bool]:
        """The crop box and flip of stream position `position`: one RNG keyed to it, so a resume,
        and decoding on the device, draw the same ones."""
        rng = random.Random(self.cfg.seed * 1_000_003 + position)
        box = _crop_box(height, width, self.cfg.crop_scale, rng)
        return box, self.cfg.flip and rng.random() < 0.5

    def _encoded(self, index: int, position: int) -> dict:
        """The JPEG bytes and the same crop box and flip that host decoding would draw."""
        store, at = self.data, index
        if hasattr(store, "indices"):  # data.train_limit's Subset
            store, at = store.dataset, store.indices[index]
        label = int(store.labels[at])
        box, flip = None, False
        if self.train:
            height, width = (int(v) for v in store.shapes[at])
            box, flip = self._draw(height, width, position)
        return {"jpeg": store.encoded_tensor(at), "box": box, "flip": flip, "label": label}


def _crop_box(height: int, width: int, min_scale: float, rng: random.Random) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (area in [min_scale, 1], aspect in [3/4, 4/3]) from our own RNG."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return 0, 0, height, width


def collate(samples: list[dict], cfg: DataConfig | None = None) -> dict:
    import torch

    labels = torch.tensor([s["label"] for s in samples])
    if "jpeg" in samples[0]:  # data.decode: device
        from launcher.data.device_decode import EncodedImages

        boxes = None if samples[0]["box"] is None else tuple(s["box"] for s in samples)
        encoded = EncodedImages(tuple(s["jpeg"] for s in samples), boxes, tuple(s["flip"] for s in samples),
                                cfg.image_size, cfg.eval_resize)
        return {"encoded": encoded, "label": labels}
    from launcher.data.crops import stack

    return {"image": stack([s["image"] for s in samples]), "label": labels}


def draw_confusion(confusion, classes: list[str], path: str) -> None:
    """A confusion matrix as a PNG (rows: true class, columns: predicted), drawn with Pillow."""
    from PIL import Image, ImageDraw

    counts = confusion.cpu().tolist()
    n, cell, margin = len(classes), 44, 110
    image = Image.new("RGB", (margin + n * cell + 10, margin + n * cell + 10), "white")
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(counts):
        total = sum(row) or 1
        for j, value in enumerate(row):
            shade = 255 - int(200 * value / total)
            box = (margin + j * cell, margin + i * cell, margin + (j + 1) * cell, margin + (i + 1) * cell)
            draw.rectangle(box, fill=(shade, shade, 255), outline="gray")
            draw.text((box[0] + 4, box[1] + 15), str(int(value)), fill="black")
        draw.text((4, margin + i * cell + 15), classes[i][:14], fill="black")
        draw.text((margin + i * cell + 4, margin - 20 - 12 * (i % 2)), classes[i][:6], fill="black")
    draw.text((4, 4), "rows: true class, columns: predicted", fill="black")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)


# ---------------------------------------------------------------------------------------------
# Prediction with an export


def predict(export_dir: str, paths: list[str], top: int = 3) -> list[dict]:
    """Classify image files with an exported model: [{"path", "predictions": [(class, prob), ...]}]."""
    import torch
    import torchvision
    import torchvision.transforms.v2.functional as F

    from launcher.data.decode import read_image

    export = Path(export_dir)
    spec = json.loads((export / "transforms.json").read_text())
    classes = json.loads((export / "classes.json").read_text())
    model = torchvision.models.get_model(spec["arch"], weights=None, num_classes=len(classes))
    model.load_state_dict(torch.load(export / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    size = spec["image_size"]
    results = []
    with torch.no_grad():
        for path in paths:
            image = read_image(path)
            image = F.center_crop(F.resize(image, [round(size * spec["eval_resize"])], antialias=True), [size, size])
            image = F.normalize(image.float() / 255, spec["mean"], spec["std"])
            probabilities = model(image[None]).softmax(-1)[0]
            values, indices = probabilities.topk(min(top, len(classes)))
            results.append({"path": path, "predictions": [(classes[i], round(float(v), 4))
                                                          for v, i in zip(values, indices, strict=True)]})
    return results


def _main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "predict":
        print("usage: python -m launcher.recipes.resnet_transfer predict EXPORT_DIR IMAGE...", file=sys.stderr)
        return 2
    for result in predict(argv[1], argv[2:]):
        best = ", ".join(f"{name} {p:.3f}" for name, p in result["predictions"])
        print(f"{result['path']}: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


def memory_probe(recipe):
    """The classifier (random weights; model.weights only fills them) and a uint8 batch as the
    loader hands it over, for the plan's memory estimate."""
    import torch

    from launcher.recipe_module import MemoryProbe

    cfg: DataConfig = recipe.data
    model = build_classifier(recipe.model, _class_count(cfg.source), None)
    normalized = _normalizer(IMAGENET_MEAN, IMAGENET_STD, torch.get_default_device(), channels_last=False)

    def batch(micro: int) -> dict:
        return {"image": torch.zeros(micro, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8),
                "label": torch.zeros(micro, dtype=torch.long)}

    return MemoryProbe(model=model, batch=batch, loss=_classification_loss(normalized))


def _class_count(source: str) -> int:
    """Classes of the head, without reading an image: the digit sets have 10, an ImageFolder tree
    one per directory under train/ (or its top); 1000 (ImageNet's) when it cannot be told."""
    if source.startswith("package:"):
        return 10
    root = Path(source.removeprefix("hf:"))
    for top in (root / "train", root):
        if top.is_dir():
            classes = [entry for entry in top.iterdir() if entry.is_dir()]
            if classes:
                return len(classes)
    return 1000
