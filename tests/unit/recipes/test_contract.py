"""Every built-in recipe module keeps the contract of launcher/recipe_module.py: RecipeModule for
the module, CheckedConfig for its configs' check(), PositionalDataset for the training sets that
take the sample's stream position."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

from launcher.config.modules import BUILTIN
from launcher.recipe_module import OPTIONAL, REQUIRED, CheckedConfig, PositionalDataset

MODULES = sorted(BUILTIN.items())


@pytest.mark.parametrize("name,dotted", MODULES, ids=[name for name, _ in MODULES])
def test_every_builtin_module_is_a_recipe_module(name, dotted):
    module = importlib.import_module(dotted)
    assert all(hasattr(module, attribute) for attribute in REQUIRED), name
    assert isinstance(module.DESCRIPTION, str) and module.DESCRIPTION
    assert list(inspect.signature(module.build).parameters) == ["recipe", "ctx"]
    for config in (module.ModelConfig, module.DataConfig):
        assert dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen, config
        instance = config()  # every key has a default: a recipe may leave a key out
        if isinstance(instance, CheckedConfig):  # its problems name its own keys, with a hint
            fields = {f.name for f in dataclasses.fields(config)}
            for key, message, hint in instance.check():
                assert key.split(".")[0] in fields and message and hint, (config, key)
    if hasattr(module, "IDENTITY_EXEMPT"):
        keys = {f"{section}.{f.name}" for section, config in (("model", module.ModelConfig),
                                                             ("data", module.DataConfig))
                for f in dataclasses.fields(config)}
        assert set(module.IDENTITY_EXEMPT) <= keys, set(module.IDENTITY_EXEMPT) - keys
    extras = {attribute for attribute in vars(module) if attribute.isupper() or attribute == "tokens_per_sample"}
    assert extras & {"IDENTITY_EXEMPT", "tokens_per_sample"} <= set(OPTIONAL)


@pytest.mark.parametrize("name,dotted", MODULES, ids=[name for name, _ in MODULES])
def test_datasets_that_take_a_position_are_positional_datasets(name, dotted):
    module = importlib.import_module(dotted)
    positional = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if cls.__module__ == module.__name__ and "at" in vars(cls)]
    for cls in positional:
        assert issubclass(cls, PositionalDataset), cls  # at(index, position) and __len__
        assert list(inspect.signature(cls.at).parameters) == ["self", "index", "position"], cls


def test_the_loader_hands_positions_to_a_positional_dataset_only():
    from launcher.runtime.sampling import GlobalOrder, StreamData

    class Plain:
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int):
            return ("plain", index)

    class Positional(Plain):
        def at(self, index: int, position: int):
            return ("at", index, position)

    order = GlobalOrder(4, seed=0, shuffle=False)
    assert StreamData(Plain(), order)[5] == ("plain", 1)
    assert StreamData(Positional(), order)[5] == ("at", 1, 5)
