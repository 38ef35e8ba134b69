"""Optimizers with the usual weight-decay exclusions, and LR setting that respects group scales."""

from __future__ import annotations

from launcher.config.schema import OptimizerConfig


def param_groups(model, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Two groups: weights that decay, and biases/norm weights (1-D tensors) that do not.

    A recipe may pre-tag parameters with `_lr_scale` (e.g. a backbone at 0.1x the head) by
    passing its own groups; each group's `lr_scale` multiplies the scheduled LR.
    """
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if decay_norm_and_bias or parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0})
    return groups


def param_groups_of(named: list[tuple[str, object]], weight_decay: float, decay_norm_and_bias: bool,
                    **extra) -> list[dict]:
    """Like param_groups, for a chosen set of parameters, with extra keys on each group."""
    decay = [p for _, p in named if decay_norm_and_bias or p.ndim >= 2]
    no_decay = [p for _, p in named if not (decay_norm_and_bias or p.ndim >= 2)]
    groups = [{"params": decay, "weight_decay": weight_decay, **extra}] if decay else []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


def build_optimizer(groups: list[dict], cfg: OptimizerConfig, fused: bool = False):
    import torch

    # fused (CUDA only): one kernel updates every parameter instead of a few per tensor group.
    extra = {"fused": True} if fused else {}
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **extra)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **extra)


def set_lr(optimizer, lr: float, step: int = 0) -> None:
    """Scheduled LR x each group's lr_scale; 0 for groups whose unfreeze_step is still ahead."""
    for group in optimizer.param_groups:
        frozen = step < group.get("unfreeze_step", 0)
        group["lr"] = 0.0 if frozen else lr * group.get("lr_scale", 1.0)
