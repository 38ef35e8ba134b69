"""Safe YAML reading that remembers where every key came from.

PyYAML's SafeLoader already refuses `!!python/...` tags, but it silently keeps the last of two
duplicate keys and loses line numbers. We compose the node tree ourselves so that duplicates and
foreign tags become Problems with a line number, and every key path maps to "file:line".
"""

from __future__ import annotations

from typing import Any

import yaml

from launcher.config.errors import Problem

# The only tags a recipe may contain: the plain YAML data types.
_SAFE_TAGS = {
    "tag:yaml.org,2002:" + name
    for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}


class _Loader(yaml.SafeLoader):
    pass


def load_yaml(text: str, source: str) -> tuple[Any, dict[str, str], list[Problem]]:
    """Parse `text`; return (data, {key path: "source:line"}, problems)."""
    where: dict[str, str] = {}
    problems: list[Problem] = []
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        hint = "check indentation and quoting"
        return None, where, [Problem("", f"not valid YAML: {problem}", hint, f"{source}{line}")]
    if node is None:
        return {}, where, []
    data = _convert(node, "", source, loader, where, problems)
    return data, where, problems


def _at(source: str, node: yaml.Node) -> str:
    return f"{source}:{node.start_mark.line + 1}"


def _convert(node, path, source, loader, where, problems):
    if node.tag not in _SAFE_TAGS:
        problems.append(
            Problem(path, f"YAML tag `{node.tag}` is not allowed in a recipe",
                    "recipes hold plain data only; remove the tag", _at(source, node)))
        return None
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(Problem(path, "YAML merge keys (`<<`) are not supported",
                                        "write the keys out, or use an anchor on a whole value",
                                        _at(source, key_node)))
                continue
            key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                problems.append(Problem(path, f"key {key!r} must be a string",
                                        "quote the key", _at(source, key_node)))
                continue
            child = f"{path}.{key}" if path else key
            if key in out:
                problems.append(Problem(child, f"duplicate key (first at {where[child]})",
                                        "keep only one of them", _at(source, key_node)))
                continue
            where[child] = _at(source, key_node)
            out[key] = _convert(value_node, child, source, loader, where, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, f"{path}[{i}]", source, loader, where, problems)
                for i, item in enumerate(node.value)]
    return loader.construct_object(node)
