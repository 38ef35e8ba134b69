"""Recipe file + overrides -> a validated, frozen Recipe (or a RecipeError listing everything)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any

from launcher.config.accelerate_import import import_accelerate
from launcher.config.deepspeed_import import Taken, import_deepspeed, resolve_bucket_autos
from launcher.config.errors import Problem, RecipeError
from launcher.config.files import RECIPE_LIMIT, UnreadableFile, read_small_text
from launcher.config.modules import (
    TRACKERS,
    ModuleProblem,
    import_recipe_module,
    is_module_reference,
    reference_problem,
    resolve_reference,
    resolve_tracker,
)
from launcher.config.overrides import apply_overrides
from launcher.config.schema import Recipe
from launcher.config.validate import Collector, build_dataclass, field_key
from launcher.config.yaml_load import load_yaml


@dataclasses.dataclass(frozen=True)
class LoadedRecipe:
    """A recipe file read: the validated Recipe, the recipe module it names, the file's path."""

    recipe: Recipe
    recipe_module: ModuleType
    source: str  # the recipe file (recipe_path)
    explicit: frozenset[str] = frozenset()  # the key paths the file or an override sets (not defaults)
    taken: tuple[Taken, ...] = ()  # recipe values taken from a DeepSpeed or accelerate config
    where: dict[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)  # key -> file:line
    not_mapped: tuple[str, ...] = ()  # imported keys with no recipe equivalent that change nothing, and why

    def location(self, key: str) -> str:
        """file:line of a key, or of the nearest section that has one; the recipe file else."""
        while key:
            if key in self.where:
                return self.where[key]
            key = key.rpartition(".")[0]
        return self.source


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    source = str(path)
    try:
        text = read_small_text(path, RECIPE_LIMIT)
    except UnreadableFile as exc:
        hint = exc.hint
        if exc.message == "file not found":
            hint = ("check the path; `launcher ls` lists the shipped recipes, which run by name "
                    "(`launcher run mlp-tiny`)")
        raise RecipeError(source, [Problem("", exc.message, hint)]) from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark some editors write: not part of the YAML
    raw, where, problems = load_yaml(text, source)
    if raw is not None and not isinstance(raw, dict):
        problems.append(Problem("", f"a recipe must be a mapping of sections, got {type(raw).__name__}",
                                "start with `recipe: <module>` and sections like `model:`", source))
    if problems and not isinstance(raw, dict):
        raise RecipeError(source, problems)
    problems += apply_overrides(raw, list(overrides), where)
    for section in ("model", "data"):  # a module whose configs are all defaults needs no section
        if raw.get(section) is None:
            raw[section] = {}
    out = Collector(where, source)
    out.problems = problems
    recipe_dir = Path(path).resolve().parent
    explicit = frozenset(_key_paths(raw))
    module = _load_module(raw, recipe_dir, out)
    taken, ignored, import_problems = import_accelerate(raw, recipe_dir, where)
    out.problems += import_problems
    from_deepspeed, import_problems = import_deepspeed(raw, recipe_dir, where)
    taken += from_deepspeed
    out.problems += import_problems
    special = None
    if module is not None:
        special = {
            "model": lambda value, key: build_dataclass(module.ModelConfig, value, key, out),
            "data": lambda value, key: build_dataclass(module.DataConfig, value, key, out),
        }
    else:  # still report every other problem in the file
        special = {"model": lambda value, key: value, "data": lambda value, key: value}
    recipe = build_dataclass(Recipe, raw, "", out, special)
    trackers = _resolve_trackers(recipe, recipe_dir, out) if not out.problems else []
    if out.problems:
        raise RecipeError(source, out.problems, raw)
    tracking = dataclasses.replace(recipe.tracking, backends=trackers)
    recipe = dataclasses.replace(recipe, recipe=resolve_reference(recipe.recipe, recipe_dir), tracking=tracking)
    recipe = _with_bucket_sizes(recipe, module, where, source)
    # Explicit: what the file, an override or a config the recipe names set (not a default).
    explicit |= {entry.key for entry in taken}
    return LoadedRecipe(recipe, module, source, explicit, tuple(taken), where, tuple(ignored))


def _with_bucket_sizes(recipe: Recipe, module: ModuleType, where: dict[str, str], source: str) -> Recipe:
    """DeepSpeed bucket sizes left "auto": from the model's hidden size, which the recipe module
    gives (`hidden_size(recipe)`), as the Hugging Face integration derives them."""
    config = recipe.backend.deepspeed_config
    if recipe.backend.name != "deepspeed" or not isinstance(config, dict):
        return recipe
    hidden = getattr(module, "hidden_size", None)
    resolved, problems = resolve_bucket_autos(config, hidden(recipe) if hidden else None,
                                              where.get("backend.deepspeed_config", ""))
    if problems:
        raise RecipeError(source, problems)
    return dataclasses.replace(recipe, backend=dataclasses.replace(recipe.backend, deepspeed_config=resolved))


def _key_paths(data: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        paths.append(path)
        if isinstance(value, dict):
            paths += _key_paths(value, path)
    return paths


def _resolve_trackers(recipe: Recipe, recipe_dir: Path, out: Collector) -> list[str]:
    """tracking.backends with a user's own tracker module made absolute, as `recipe:` is, so that it
    means the same to every rank; one that cannot be found is a problem now, not in the ranks."""
    resolved = []
    for name in recipe.tracking.backends:
        if is_module_reference(name):
            reference = resolve_tracker(name, recipe_dir)
            problem = reference_problem(reference)
            if problem:
                out.add("tracking.backends", f"tracker module `{name}`: {problem}",
                        "a registered tracker (" + ", ".join(TRACKERS) + "), a dotted module on PYTHONPATH, or "
                        "a .py file relative to the recipe file")
            name = reference
        resolved.append(name)
    return resolved


def _load_module(raw: dict[str, Any], recipe_dir: Path, out: Collector) -> ModuleType | None:
    reference = raw.get("recipe")
    if not isinstance(reference, str) or not reference:
        if "recipe" in raw:
            out.add("recipe", "must name a recipe module", "e.g. `recipe: mlp_regression`")
        return None  # "is required" comes from the schema
    try:
        return import_recipe_module(resolve_reference(reference, recipe_dir))
    except ModuleProblem as exc:
        out.add("recipe", exc.message, exc.hint)
    except Exception as exc:  # noqa: BLE001 - a user module that fails to import is input error
        out.add("recipe", f"importing `{reference}` failed: {type(exc).__name__}: {exc}",
                "fix the module so that `python -c 'import ...'` works")
    return None


def recipe_to_dict(obj: Any) -> Any:
    """Plain data for YAML/JSON output, with schema key spellings (`global`, not `global_`)."""
    if dataclasses.is_dataclass(obj):
        return {field_key(f): recipe_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [recipe_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: recipe_to_dict(v) for k, v in obj.items()}
    return obj
