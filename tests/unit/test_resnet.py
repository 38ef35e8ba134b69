"""ResNet transfer: head shape, frozen BatchNorm, discriminative LRs and unfreezing in the optimizer."""

from __future__ import annotations

import pytest
import torch

from launcher.config.schema import OptimizerConfig
from launcher.recipes.resnet_transfer import DataConfig, ModelConfig, build_classifier, optimizer_groups
from launcher.runtime.optim import build_optimizer, set_lr


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
