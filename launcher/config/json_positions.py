"""Where each key of a JSON document is: the line of every dotted key path, for error messages that
point into a user's DeepSpeed config file. json itself keeps no positions."""

from __future__ import annotations

import json


def key_lines(text: str) -> dict[str, int]:
    """{"zero_optimization.stage": 24, ...}: the 1-based line of every object key, by dotted path
    (list items as `key[0]`). Text that is not valid JSON gives what was read before the error."""
    lines: dict[str, int] = {}
    decoder = json.JSONDecoder()
    _value(text, _skip(text, 0), "", lines, decoder)
    return lines


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _value(text: str, at: int, path: str, lines: dict[str, int], decoder: json.JSONDecoder) -> int:
    """Read the value at `at`, recording the keys inside it; the index after it."""
    if at >= len(text):
        return at
    if text[at] == "{":
        return _object(text, at + 1, path, lines, decoder)
    if text[at] == "[":
        return _array(text, at + 1, path, lines, decoder)
    try:
        _, end = decoder.raw_decode(text, at)
    except ValueError:
        return len(text)
    return end


def _object(text: str, at: int, path: str, lines: dict[str, int], decoder: json.JSONDecoder) -> int:
    at = _skip(text, at)
    while at < len(text) and text[at] != "}":
        try:
            key, at = decoder.raw_decode(text, at)
        except ValueError:
            return len(text)
        child = f"{path}.{key}" if path else str(key)
        lines.setdefault(child, text.count("\n", 0, at) + 1)
        at = _skip(text, at)
        at = _skip(text, at + 1)  # the colon
        at = _skip(text, _value(text, at, child, lines, decoder))
        if at < len(text) and text[at] == ",":
            at = _skip(text, at + 1)
    return at + 1


def _array(text: str, at: int, path: str, lines: dict[str, int], decoder: json.JSONDecoder) -> int:
    at = _skip(text, at)
    index = 0
    while at < len(text) and text[at] != "]":
        at = _skip(text, _value(text, at, f"{path}[{index}]", lines, decoder))
        index += 1
        if at < len(text) and text[at] == ",":
            at = _skip(text, at + 1)
    return at + 1
