"""Slurm hostlist expressions: `gpu[01-03,07],cpu5` -> gpu01 gpu02 gpu03 gpu07 cpu5.

Pure, so the rendezvous host of a Slurm job (the first node of SLURM_JOB_NODELIST) is computed
without calling `scontrol show hostnames` (one subprocess less, and unit-testable). Zero padding
is kept (`[08-10]` -> 08 09 10) and several bracket groups multiply (`r[1-2]n[1-2]`), as Slurm does.
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(expression: str) -> list[str]:
    """Raise ValueError with the offending part on malformed input."""
    hosts: list[str] = []
    for item in _split_top_level(expression.strip()):
        if not item:
            raise ValueError(f"empty host in hostlist {expression!r}")
        hosts.extend(_expand_item(item, expression))
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are outside brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced `]` in hostlist {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise ValueError(f"unbalanced `[` in hostlist {text!r}")
    parts.append("".join(current))
    return parts


def _expand_item(item: str, whole: str) -> list[str]:
    start = item.find("[")
    if start < 0:
        return [item]
    end = item.index("]", start)
    prefix, body, rest = item[:start], item[start + 1:end], item[end + 1:]
    tails = _expand_item(rest, whole) if rest else [""]
    out = []
    for number in _expand_ranges(body, whole):
        out.extend(prefix + number + tail for tail in tails)
    return out


def _expand_ranges(body: str, whole: str) -> list[str]:
    numbers = []
    for part in body.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ValueError(f"bad range `{part}` in hostlist {whole!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"descending range `{part}` in hostlist {whole!r}")
        width = len(low) if low.startswith("0") else 0
        numbers.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return numbers
