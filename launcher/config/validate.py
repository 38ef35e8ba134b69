"""Turn raw YAML data into frozen dataclasses, collecting every problem instead of stopping.

Types understood: bool, int, float, str, Literal[...], Union[...], Optional, list[X],
tuple[X, ...] of fixed length, dict[str, X], dict[str, Any], and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from launcher.config.errors import Problem, did_you_mean
from launcher.recipe_module import CheckedConfig

_MISSING = object()


class Collector:
    """Accumulates problems; knows where each key path came from (file:line or command line)."""

    def __init__(self, where: dict[str, str], default_where: str) -> None:
        self.where = where
        self.default_where = default_where
        self.problems: list[Problem] = []

    def add(self, path: str, message: str, hint: str = "") -> None:
        location = self.where.get(path) or self._nearest(path)
        self.problems.append(Problem(path, message, hint, location))

    def _nearest(self, path: str) -> str:
        while "." in path:
            path = path.rsplit(".", 1)[0]
            if path in self.where:
                return self.where[path]
        return self.default_where


def field_key(f: dataclasses.Field) -> str:
    """The key a field has in YAML (`global_` is spelled `global` there)."""
    return f.metadata.get("key", f.name)


def build_dataclass(cls: type, raw: Any, path: str, out: Collector,
                    special: dict[str, Callable[[Any, str], Any]] | None = None) -> Any:
    """Build `cls` from a mapping; `special` maps field names to custom builders."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        out.add(path, f"expected a mapping of {cls.__name__} keys, got {_describe(raw)}",
                "write it as `key: value` lines indented under this key")
        return _MISSING
    hints = typing.get_type_hints(cls)
    fields = {field_key(f): f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            suggestion = did_you_mean(key, fields)
            allowed = ", ".join(sorted(fields))
            out.add(_join(path, key), "unknown key",
                    suggestion or f"allowed keys here: {allowed}")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        child = _join(path, key)
        if key not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                out.add(child, "is required", f"add `{key}:` to the recipe")
            continue
        if special and f.name in special:
            value = special[f.name](raw[key], child)
        else:
            value = coerce(raw[key], hints[f.name], child, out)
        if value is not _MISSING:
            values[f.name] = value
    try:
        obj = cls(**values)
    except TypeError:  # a required field failed; already reported
        return _MISSING
    return _run_checks(obj, path, out)


def _run_checks(obj: Any, path: str, out: Collector) -> Any:
    if isinstance(obj, CheckedConfig):
        for key, message, hint in obj.check():
            out.add(_join(path, key), message, hint)
    return obj


def coerce(value: Any, tp: Any, path: str, out: Collector) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, out)
    if origin is typing.Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        choices = ", ".join(f"`{a}`" for a in args)
        hint = did_you_mean(str(value), [str(a) for a in args]) or f"choose one of {choices}"
        out.add(path, f"expected one of {choices}, got {_describe(value)}", hint)
        return _MISSING
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, path, out)
    if origin is list:
        if not isinstance(value, list):
            out.add(path, f"expected a list, got {_describe(value)}", "write it as `[a, b]`")
            return _MISSING
        items = [coerce(v, args[0], f"{path}[{i}]", out) for i, v in enumerate(value)]
        return _MISSING if _MISSING in items else items
    if origin is tuple:
        if not isinstance(value, list) or len(value) != len(args):
            out.add(path, f"expected a list of {len(args)} values, got {_describe(value)}",
                    f"write it as `[{', '.join('x' for _ in args)}]`")
            return _MISSING
        items = [coerce(v, a, f"{path}[{i}]", out) for i, (v, a) in enumerate(zip(value, args, strict=True))]
        return _MISSING if _MISSING in items else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            out.add(path, f"expected a mapping, got {_describe(value)}", "write `key: value` lines")
            return _MISSING
        items = {k: coerce(v, args[1], _join(path, str(k)), out) for k, v in value.items()}
        return _MISSING if _MISSING in items.values() else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        out.add(path, f"expected true or false, got {_describe(value)}", "write `true` or `false`")
        return _MISSING
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        out.add(path, f"expected an integer, got {_describe(value)}", "write a whole number like `8`")
        return _MISSING
    if tp is float:
        return _coerce_float(value, path, out)
    if tp is str:
        if isinstance(value, str):
            return value
        out.add(path, f"expected a string, got {_describe(value)}", _string_hint(value))
        return _MISSING
    raise TypeError(f"schema type {tp!r} at {path} is not supported")  # a bug in a schema, not input


def _coerce_union(value: Any, args: tuple, path: str, out: Collector) -> Any:
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        trial = Collector({}, "")
        result = coerce(value, arg, path, trial)
        if result is not _MISSING and not trial.problems:
            return result
    names = " or ".join(_type_name(a) for a in args if a is not type(None))
    out.add(path, f"expected {names}, got {_describe(value)}", "")
    return _MISSING


def _coerce_float(value: Any, path: str, out: Collector) -> Any:
    if isinstance(value, bool):
        out.add(path, f"expected a number, got {_describe(value)}", "write a number like `0.1`")
        return _MISSING
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        # YAML 1.1 reads `1e-4` (no dot) as a string; we accept any float spelling here.
        try:
            result = float(value.strip())
        except ValueError:
            out.add(path, f"expected a number, got {_describe(value)}", "write a number like `3e-4`")
            return _MISSING
    else:
        out.add(path, f"expected a number, got {_describe(value)}", "write a number like `0.1`")
        return _MISSING
    if not math.isfinite(result):
        out.add(path, f"expected a finite number, got {value!r}", "write a finite number")
        return _MISSING
    return result


def _string_hint(value: Any) -> str:
    if isinstance(value, bool):
        return "YAML reads yes/no/on/off/true/false as booleans: quote it, e.g. \"no\""
    if isinstance(value, int):
        return ("YAML 1.1 reads values like 12:30 as base-60 numbers and 0755 as octal: "
                "quote it, e.g. \"12:30\"")
    if value is None:
        return "an empty value is null in YAML: write \"\" for an empty string"
    return "quote the value"


def _describe(value: Any) -> str:
    if value is None:
        return "null (empty value)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__}"
    return f"{type(value).__name__} {value!r}"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(f"`{a}`" for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
