"""An MLP learns a fixed random "teacher" network from generated data.

The smallest real training job: no downloads, seconds on a laptop CPU, a loss that visibly falls.
It proves the whole path (recipe -> plan -> torchrun -> backend -> checkpoints) end to end, and is
the template for writing your own recipe module:

    launcher run recipes/mlp-tiny.yaml --nproc 2

Samples carry their index, so tests can check exactly which samples each step saw.
"""

from __future__ import annotations

from dataclasses import dataclass

DESCRIPTION = "MLP regression on generated data (CPU, seconds): the smoke test and template"


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.0

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.hidden <= 0:
            out.append(("hidden", f"must be > 0, got {self.hidden}", "e.g. 64"))
        if self.layers <= 0:
            out.append(("layers", f"must be > 0, got {self.layers}", "e.g. 2"))
        if not 0 <= self.dropout < 1:
            out.append(("dropout", "must be in [0, 1)", "e.g. 0.1"))
        return out


@dataclass(frozen=True)
class DataConfig:
    samples: int = 4096
    eval_samples: int = 512
    features: int = 16
    outputs: int = 4
    noise: float = 0.05
    seed: int = 1234  # the teacher and the data; independent of the training seed

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        for key in ("samples", "eval_samples", "features", "outputs"):
            if getattr(self, key) <= 0:
                out.append((key, f"must be > 0, got {getattr(self, key)}", "a positive count"))
        if self.noise < 0:
            out.append(("noise", "must be >= 0", "standard deviation of the label noise"))
        if not 0 <= self.seed < 2**40:  # torch generators take 64 bits; the eval split's seed is derived from it
            out.append(("seed", f"must be in 0..2**40-1, got {self.seed}", "any whole number like 1234"))
        return out


def hidden_size(recipe) -> int:
    """The model's width: DeepSpeed's "auto" bucket sizes derive from it (config/deepspeed_import.py)."""
    return recipe.model.hidden


def tokens_per_sample(recipe) -> None:
    return None  # not a sequence model


def build(recipe, ctx):
    import torch

    from launcher.recipe_module import Task

    data_cfg: DataConfig = recipe.data
    model_cfg: ModelConfig = recipe.model
    x_train, y_train = _generate(data_cfg, data_cfg.samples, offset=0)
    x_eval, y_eval = _generate(data_cfg, data_cfg.eval_samples, offset=1)

    model = _model(model_cfg, data_cfg)

    def collate(samples):
        ids, xs, ys = zip(*samples, strict=True)
        return {"ids": torch.tensor(ids), "x": torch.stack(xs), "y": torch.stack(ys)}

    def export(model, state_dict, directory):
        torch.save(state_dict, f"{directory}/model.pt")

    n_params = sum(p.numel() for p in model.parameters())
    return Task(
        model=model,
        train_data=_Indexed(x_train, y_train),
        eval_data=_Indexed(x_eval, y_eval),
        collate=collate,
        loss=loss,
        count_targets=lambda batch: len(batch["ids"]),
        flops_per_sample=6.0 * n_params,
        export=export,
    )


class _Indexed:
    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return i, self.x[i], self.y[i]


def memory_probe(recipe):
    """The model and a micro-batch of the shapes collate makes, for the plan's memory estimate."""
    import torch

    from launcher.recipe_module import MemoryProbe

    cfg: DataConfig = recipe.data

    def batch(micro: int) -> dict:
        return {"ids": torch.zeros(micro, dtype=torch.long), "x": torch.zeros(micro, cfg.features),
                "y": torch.zeros(micro, cfg.outputs)}

    return MemoryProbe(model=_model(recipe.model, cfg), batch=batch, loss=loss)


def _model(model_cfg: ModelConfig, data_cfg: DataConfig):
    from torch import nn

    layers: list[nn.Module] = []
    width = data_cfg.features
    for _ in range(model_cfg.layers):
        layers += [nn.Linear(width, model_cfg.hidden), nn.GELU(), nn.Dropout(model_cfg.dropout)]
        width = model_cfg.hidden
    layers.append(nn.Linear(width, data_cfg.outputs))
    return nn.Sequential(*layers)


def loss(model, batch):
    import torch

    prediction = model(batch["x"])
    per_sample = (prediction.float() - batch["y"]).pow(2).mean(dim=1)
    # The count is filled on the device: torch.tensor(n, device=...) would copy it from the host
    # and wait for the GPU every micro-step.
    return per_sample.sum(), torch.full((), per_sample.numel(), device=per_sample.device)


def _generate(cfg: DataConfig, count: int, offset: int):
    """Inputs ~ N(0, 1); targets from a fixed random tanh network plus noise."""
    import torch

    teacher_gen = torch.Generator().manual_seed(cfg.seed)
    w1 = torch.randn(cfg.features, 32, generator=teacher_gen) / cfg.features**0.5
    w2 = torch.randn(32, cfg.outputs, generator=teacher_gen) / 32**0.5
    data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1 + offset)
    x = torch.randn(count, cfg.features, generator=data_gen)
    y = torch.tanh(x @ w1) @ w2 * 2.0 + cfg.noise * torch.randn(count, cfg.outputs, generator=data_gen)
    return x, y
