"""Command-line overrides: `a.b=value` sets, `~a.b` deletes. Values are read as YAML scalars."""

from __future__ import annotations

from typing import Any

from launcher.config.errors import Problem
from launcher.config.yaml_load import load_yaml


def apply_overrides(raw: dict[str, Any], overrides: list[str], where: dict[str, str]) -> list[Problem]:
    """Apply overrides to `raw` in place; record each touched path in `where`."""
    problems: list[Problem] = []
    for arg in overrides:
        source = f"command line `{arg}`"
        if arg.startswith("~"):
            path, value, delete = arg[1:], None, True
        elif "=" in arg:
            path, text = arg.split("=", 1)
            delete = False
            value, _, value_problems = load_yaml(text, source) if text else ("", {}, [])
            if value_problems:
                problems += [Problem(path, p.message, "quote the value", source) for p in value_problems]
                continue
        else:
            problems.append(Problem(arg, "an override must be `key=value` or `~key`",
                                    f"e.g. `optimizer.lr=3e-4` or `~{arg}`", source))
            continue
        keys = path.split(".")
        if not path or any(not k for k in keys):
            problems.append(Problem(path, "empty key in override", "write dotted keys like `batch.micro=8`", source))
            continue
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None and not delete:
                child = node[key] = {}
            if not isinstance(child, dict):
                problems.append(Problem(".".join(keys[: depth + 1]), "is not a section, cannot set a key under it",
                                        "check the dotted path", source))
                break
            node = child
        else:
            leaf = keys[-1]
            if delete:
                if leaf not in node:
                    problems.append(Problem(path, "nothing to delete: the key is not set",
                                            "check the spelling of the key", source))
                    continue
                del node[leaf]
            else:
                node[leaf] = value
            where[path] = source
            for stale in [k for k in where if k.startswith(path + ".")]:
                where[stale] = source
    return problems
