"""The recipes' training losses make no per-micro-step host sync (counted by launcher.runtime.syncs)."""

from __future__ import annotations

import pytest
import torch

from launcher.recipe_module import RunContext
from launcher.runtime.syncs import count_syncs


def test_the_counter_sees_each_kind_of_sync_with_its_line():
    x = torch.ones(3)
    with count_syncs() as found:
        x.sum().item()
        x.tolist()
        if x.sum():
            pass
        torch.tensor(5, device=x.device)
        torch.tensor(5)  # a host tensor: no sync
        torch.full((), 5, device=x.device)  # filled by a kernel: no sync
    kinds = sorted(key.split(" ", 1)[1] for key in found)
    assert kinds == [".item()", ".tolist()", "torch.tensor(host data, device=...)", "truth value"], found
    assert all("test_syncs.py:" in key for key in found)


def _ctx(tmp_path) -> RunContext:
    return RunContext(0, 0, 1, torch.device("cpu"), str(tmp_path), lambda: None)


def _recipe(module, **data):
    from launcher.config.schema import Recipe

    return Recipe(recipe=module.__name__, model=module.ModelConfig(), data=module.DataConfig(**data))


@pytest.mark.parametrize("name", ["mlp_regression", "resnet_transfer"])
def test_a_training_loss_makes_no_sync(tmp_path, name):
    import importlib

    module = importlib.import_module(f"launcher.recipes.{name}")
    if name == "resnet_transfer":
        from tests.unit.recipes.test_resnet import SIZES, _image_tree

        for split in ("train", "val"):
            _image_tree(tmp_path / "tree" / split, SIZES)
        recipe = _recipe(module, source=str(tmp_path / "tree"), image_size=32)
    else:
        recipe = _recipe(module, samples=64, eval_samples=8)
    task = module.build(recipe, _ctx(tmp_path))
    batch = task.collate([task.train_data[i] for i in range(4)])
    with count_syncs() as found:
        total, count = task.loss(task.model, batch)
        total.backward()
    assert found == {}, found
    assert int(count) == task.count_targets(batch)
