"""Finding a recipe module: a built-in name, a dotted import path, or a .py file, checked
against the contract in launcher/recipe_module.py (RecipeModule)."""

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


class ModuleProblem(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def resolve_reference(reference: str, recipe_dir: Path) -> str:
    """Normalise a reference so it means the same from any working directory."""
    if reference.endswith(".py"):
        return str((recipe_dir / reference).resolve())
    return BUILTIN.get(reference, reference)


def import_recipe_module(reference: str) -> ModuleType:
    """Import a resolved reference (dotted name or absolute .py path); check the protocol."""
    if reference.endswith(".py"):
        path = Path(reference)
        if not path.is_file():
            raise ModuleProblem(f"recipe module file {reference} does not exist",
                                "give a path relative to the recipe file, or a built-in name: "
                                + ", ".join(sorted(BUILTIN)))
        name = f"launcher_user_recipe_{abs(hash(reference))}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses need their module registered
        spec.loader.exec_module(module)
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
