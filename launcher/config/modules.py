"""Finding the modules a recipe names: its recipe module (`recipe:`), checked against the contract
in launcher/recipe_module.py (RecipeModule), and its trackers (`tracking.backends`). Each is a
registered name, a dotted import path, or a .py file beside the recipe. The registries hold
module paths as text: nothing here imports a tracker, and a recipe module only when asked."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from launcher.recipe_module import REQUIRED

BUILTIN = {
    "mlp_regression": "launcher.recipes.mlp_regression",
    "bert_pretrain": "launcher.recipes.bert_pretrain",
    "gpt_finetune": "launcher.recipes.gpt_finetune",
    "resnet_transfer": "launcher.recipes.resnet_transfer",
}


# Trackers by name: a new tracker is a module with open_tracker(context) (launcher/tracking/base.py)
# and one line here.
TRACKERS = {
    "wandb": "launcher.tracking.wandb_tracker",
    "tensorboard": "launcher.tracking.tensorboard_tracker",
}


def is_module_reference(name: str) -> bool:
    """A module of the user's own rather than a registered name: `pkg.module` or `file.py`."""
    return name.endswith(".py") or "." in name


def resolve_tracker(name: str, recipe_dir: Path | None = None) -> str:
    """A tracker's module: the registered one, or the user's own (a .py file relative to the recipe)."""
    if name in TRACKERS:
        return TRACKERS[name]
    if name.endswith(".py") and recipe_dir is not None:
        return str((recipe_dir / name).resolve())
    return name


class ModuleProblem(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def resolve_reference(reference: str, recipe_dir: Path) -> str:
    """Normalise a reference so it means the same from any working directory."""
    if reference.endswith(".py"):
        return str((recipe_dir / reference).resolve())
    return BUILTIN.get(reference, reference)


def import_reference(reference: str) -> ModuleType:
    """Import a resolved reference: a dotted module name, or an absolute .py path (executed anew at
    each call, so an edited file is read as it is now)."""
    if not reference.endswith(".py"):
        return importlib.import_module(reference)
    name = f"launcher_user_recipe_{abs(hash(reference))}"
    spec = importlib.util.spec_from_file_location(name, reference)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need their module registered
    spec.loader.exec_module(module)
    return module


def reference_problem(reference: str) -> str:
    """Why a resolved reference cannot be imported, found without importing it ("" when it can)."""
    if reference.endswith(".py"):
        return "" if Path(reference).is_file() else f"{reference} does not exist"
    try:
        found = importlib.util.find_spec(reference.split(".")[0]) is not None
    except (ImportError, ValueError):
        found = False
    return "" if found else f"no module named `{reference}` on PYTHONPATH"


def import_recipe_module(reference: str) -> ModuleType:
    """Import a resolved reference (dotted name or absolute .py path); check the protocol."""
    if reference.endswith(".py"):
        if not Path(reference).is_file():
            raise ModuleProblem(f"recipe module file {reference} does not exist",
                                "give a path relative to the recipe file, or a built-in name: "
                                + ", ".join(sorted(BUILTIN)))
        module = import_reference(reference)
    else:
        try:
            module = importlib.import_module(reference)
        except ModuleNotFoundError as exc:
            if exc.name and reference.startswith(exc.name):
                raise ModuleProblem(f"no recipe module named `{reference}`",
                                    "built-in recipes: " + ", ".join(sorted(BUILTIN))
                                    + "; or a dotted module path on PYTHONPATH, or a .py file") from None
            raise
    missing = [a for a in REQUIRED if not hasattr(module, a)]
    if missing:
        raise ModuleProblem(f"recipe module `{reference}` lacks {', '.join(missing)}",
                            "a recipe module defines DESCRIPTION, ModelConfig, DataConfig and build(); "
                            "see launcher/recipes/mlp_regression.py")
    return module
