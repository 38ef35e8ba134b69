"""The contract between the launcher and a recipe module, as code.

A recipe module is one Python file (launcher/recipes/mlp_regression.py is the whole contract in
the order a user writes it):

    DESCRIPTION = "one line for `launcher ls`"

    @dataclass(frozen=True)
    class ModelConfig:            # the recipe file's `model:` section, typed and validated
        hidden: int = 64
        def check(self): ...      # optional: [(key, problem, hint)] for rules across keys

    @dataclass(frozen=True)
    class DataConfig: ...         # the `data:` section, likewise

    def build(recipe, ctx) -> Task: ...   # in each process: model, data, loss (imports torch here)

Optional: `tokens_per_sample(recipe)` for the plan's arithmetic table, `IDENTITY_EXEMPT`, the
`model.`/`data.` keys a run may change between resumes, and `memory_probe(recipe) -> MemoryProbe`:
the model and a micro-batch without data or weights, which the plan's memory estimate traces on
the meta device (launcher/runtime/memory_probe.py). Module-level code must not import torch:
`launcher plan` imports the module to validate the recipe.

A training dataset may define `at(index, position)` (PositionalDataset): it then receives the
sample's position in the global data stream too, to key per-sample randomness (masking, crops) to
it, so every epoch differs and a resume repeats exactly.

Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Problems = list[tuple[str, str, str]]  # (key under the section, what is wrong, how to fix it)


@runtime_checkable
class CheckedConfig(Protocol):
    """A config dataclass with rules across its keys; the validator calls check() after typing."""

    def check(self) -> Problems: ...


class RecipeModule(Protocol):
    """What `recipe:` in a recipe file names (a built-in name, a dotted module or a .py file)."""

    DESCRIPTION: str
    ModelConfig: type
    DataConfig: type

    def build(self, recipe: Any, ctx: RunContext) -> Task: ...


REQUIRED = ("DESCRIPTION", "ModelConfig", "DataConfig", "build")
OPTIONAL = ("tokens_per_sample", "IDENTITY_EXEMPT", "memory_probe")


@runtime_checkable
class PositionalDataset(Sized, Protocol):
    """A training set whose samples may depend on their position in the global stream."""

    def at(self, index: int, position: int) -> Any: ...


@dataclass
class RunContext:
    """Handed to a recipe's build(): where it runs and where to write."""

    rank: int
    local_rank: int
    world_size: int
    device: Any  # torch.device
    run_dir: str
    barrier: Callable[[], None]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Task:
    """What build() returns: the model, the data and how to score a batch."""

    model: Any  # torch.nn.Module
    train_data: Any  # map-style dataset: train_data[i] -> sample (or a PositionalDataset)
    collate: Callable[[list], Any]
    # loss(model, batch) -> (sum of per-target losses, number of targets), both tensors.
    # Summing (not averaging) lets the trainer divide by the target count of the whole global
    # batch, so uneven micro-batches give exactly the gradient of one big batch.
    loss: Callable[[Any, Any], tuple[Any, Any]]
    count_targets: Callable[[Any], int]  # cheap, on the host, before the forward pass
    eval_data: Any = None
    # evaluate(model, batches) -> {"metric": (sum, count)}: summed over ranks, then divided. A
    # plain tensor value (e.g. a confusion matrix) is summed over ranks and handed to
    # eval_artifacts(tensors, step, run_dir) on rank 0, which returns [(name, image path)].
    evaluate: Callable[[Any, Any], dict[str, Any]] | None = None
    eval_artifacts: Callable[[dict, int, str], list[tuple[str, str]]] | None = None
    # Optimizer groups; default: all trainable parameters, with norm/bias weight-decay exclusion.
    # Groups may carry `lr_scale` (x the scheduled LR) and `unfreeze_step` (LR 0 before it).
    param_groups: list[dict] | None = None
    loader_workers: int = 0  # DataLoader worker processes (persistent, pinned memory on GPU)
    # generate_samples(model) -> rows of {"prompt", "mode", "text"}, at every evaluation. Called on
    # every rank (sharded engines need all ranks for a forward); rank 0 logs the rows.
    generate_samples: Callable[[Any], list[dict]] | None = None
    report_perplexity: bool = False  # language models: eval_perplexity = exp(eval_loss)
    flops_per_sample: float | None = None  # forward + backward, for MFU
    tokens_per_sample: int | None = None
    # export(unwrapped model, full state dict, directory), called on global rank 0 only
    export: Callable[[Any, dict, str], None] | None = None
    shuffle: bool = True
    # Each training sample's length (e.g. tokens): when given, every global batch is drawn from
    # samples of about one length (launcher.runtime.sampling.GlobalOrder), for little padding.
    lengths: Any = None


@dataclass
class MemoryProbe:
    """What memory_probe(recipe) returns. Everything is made on the current default device, which
    the estimate sets to meta: no weights are read and no data is touched, so a pretrained source
    contributes its config only."""

    model: Any  # torch.nn.Module, as build() would make it (frozen parameters included)
    batch: Callable[[int], Any]  # micro-batch size -> one micro-batch, shaped as collate makes it
    loss: Callable[[Any, Any], tuple[Any, Any]]  # as Task.loss
