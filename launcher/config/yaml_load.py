"""Safe YAML reading that remembers where every key came from.

PyYAML's SafeLoader already refuses `!!python/...` tags, but it silently keeps the last of two
duplicate keys and loses line numbers. We compose the node tree ourselves so that duplicates and
foreign tags become Problems with a line number, and every key path maps to "file:line". The same
walk refuses what YAML 1.1 reads surprisingly (`12:30` is 750, `0755` is 493, `2024-01-01` a
date), NUL characters, and anchors whose aliases expand a small file into a huge (or endless) tree.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from launcher.config.errors import Problem

# The only tags a recipe may contain: the plain YAML data types.
_SAFE_TAGS = {
    "tag:yaml.org,2002:" + name
    for name in ("str", "int", "float", "bool", "null", "map", "seq")
}
# A recipe has a few hundred values; aliases may repeat a block, but never multiply it past this.
MAX_VALUES = 20_000
_INT, _FLOAT, _TIMESTAMP = ("tag:yaml.org,2002:" + n for n in ("int", "float", "timestamp"))
_LEGACY_OCTAL = re.compile(r"[-+]?0[0-7_]+")


class _TooLarge(Exception):
    pass


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
    walk = _Walk(source, loader, where, problems)
    try:
        data = walk.convert(node, "")
    except _TooLarge:
        return None, where, [Problem("", f"the YAML expands to more than {MAX_VALUES} values through anchors and "
                                     "aliases (`&x` ... `*x`)", "write the values out; a recipe is small", source)]
    return data, where, problems


def _at(source: str, node: yaml.Node) -> str:
    return f"{source}:{node.start_mark.line + 1}"


class _Walk:
    """Node tree -> plain data, recording problems; counts every value it builds (aliases too)."""

    def __init__(self, source: str, loader, where: dict[str, str], problems: list[Problem]) -> None:
        self.source, self.loader, self.where, self.problems = source, loader, where, problems
        self.values = 0
        self.open: set[int] = set()  # collections being converted: one seen again is an alias of itself

    def convert(self, node, path: str):
        self.values += 1
        if self.values > MAX_VALUES:
            raise _TooLarge
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            if id(node) in self.open:
                self.problems.append(Problem(path, "an alias refers to a collection that contains it (endless)",
                                             "remove the self-reference", _at(self.source, node)))
                return None
            self.open.add(id(node))
            try:
                return self._collection(node, path)
            finally:
                self.open.discard(id(node))
        return self._scalar(node, path)

    def _collection(self, node, path: str):
        source, problems = self.source, self.problems
        if node.tag not in _SAFE_TAGS:
            return self._foreign_tag(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(Problem(path, "YAML merge keys (`<<`) are not supported",
                                        "write the keys out, or use an anchor on a whole value", _at(source, key_node)))
                continue
            key = self.loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or "\0" in key:
                problems.append(Problem(path, f"key {key!r} must be a string" if not isinstance(key, str)
                                        else "a key holds a NUL character", "quote the key", _at(source, key_node)))
                continue
            child = f"{path}.{key}" if path else key
            if key in out:
                problems.append(Problem(child, f"duplicate key (first at {self.where[child]})",
                                        "keep only one of them", _at(source, key_node)))
                continue
            self.where[child] = _at(source, key_node)
            out[key] = self.convert(value_node, child)
        return out

    def _scalar(self, node, path: str):
        at = _at(self.source, node)
        if node.tag == _TIMESTAMP:
            self.problems.append(Problem(path, f"`{node.value}` is read by YAML as a date",
                                         f'quote it ("{node.value}") or write a number', at))
            return None
        if node.tag not in _SAFE_TAGS:
            return self._foreign_tag(node, path)
        if node.tag in (_INT, _FLOAT) and ":" in node.value:
            self.problems.append(Problem(path, f"`{node.value}` is read by YAML 1.1 as a base-60 number "
                                         f"({self.loader.construct_object(node)})",
                                         f'write the number you mean, or quote it ("{node.value}")', at))
            return None
        if node.tag == _INT and _LEGACY_OCTAL.fullmatch(node.value):
            self.problems.append(Problem(path, f"`{node.value}` is read by YAML 1.1 as an octal number "
                                         f"({self.loader.construct_object(node)})",
                                         f'drop the leading zero, or quote it ("{node.value}")', at))
            return None
        value = self.loader.construct_object(node)
        if isinstance(value, str) and "\0" in value:
            self.problems.append(Problem(path, "holds a NUL character", "remove it: no file, argument or "
                                         "environment variable can carry one", at))
            return None
        return value

    def _foreign_tag(self, node, path: str):
        self.problems.append(Problem(path, f"YAML tag `{node.tag}` is not allowed in a recipe",
                                     "recipes hold plain data only; remove the tag", _at(self.source, node)))
        return None
