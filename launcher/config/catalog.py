"""What ships: built-in recipe modules and the recipe files under recipes/."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from launcher.config.modules import BUILTIN

# The package's view of the repository's recipes/ and hostfiles/: symlinks in a source checkout
# (and an editable install), real files in a wheel (package data), so `launcher ls` and
# `launcher run mlp-tiny` work however the launcher was installed.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "_shipped"
RECIPE_DIR = (SHIPPED_DIR / "recipes").resolve()
HOSTFILE_DIR = (SHIPPED_DIR / "hostfiles").resolve()


def builtin_modules() -> list[tuple[str, str]]:
    return [(name, importlib.import_module(module).DESCRIPTION) for name, module in sorted(BUILTIN.items())]


def resolve_recipe_file(argument: str) -> str:
    """The recipe file a command line names: a path as given, or a shipped recipe by its name.

    `launcher run mlp-tiny` works from any directory, the way torchtune runs its built-in
    configs. A file that exists, or anything with a directory part, is always taken as a path,
    so a local file is never shadowed by a shipped one.
    """
    if os.path.exists(argument):
        return argument
    shipped = shipped_recipe(argument)
    return str(shipped) if shipped else argument


def shipped_recipe(name: str) -> Path | None:
    """The shipped recipe file called `name` (with or without .yaml), or None."""
    if "/" in name or os.sep in name:
        return None
    path = RECIPE_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    return path if path.is_file() else None


def is_shipped(recipe_path: str) -> bool:
    """A recipe file that ships with the launcher: its run directory is named after it alone."""
    return Path(recipe_path).resolve().parent == RECIPE_DIR


def shipped_recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))


def shipped_recipe_files() -> list[tuple[str, str]]:
    """(path, description) for each recipe file; the description is the file's `description:`."""
    import yaml

    out = []
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            description = str(data.get("description", "")) if isinstance(data, dict) else ""
        except yaml.YAMLError:
            description = "(does not parse: run `launcher validate`)"
        out.append((f"recipes/{path.name}", description))
    return out

