"""Hostfiles in DeepSpeed's syntax: `hostname slots=N`, `#` comments, blank lines.

Pure functions over text, so every rule is unit-tested without a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from launcher.config.errors import Problem

# RFC 1123 labels plus IPv4 addresses; anything else (spaces, `;`, leading `-`) is refused
# because hostnames end up in ssh/pdsh argv.
_HOST = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})$")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int


def parse_hostfile(text: str, source: str) -> tuple[list[Host], list[Problem]]:
    hosts: list[Host] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        parts = content.split()
        name = parts[0]
        if not _HOST.match(name):
            problems.append(Problem("hostfile", f"`{name}` is not a valid hostname",
                                    "hostnames use letters, digits, `.`, `-` and `_`, and never start with `-`", where))
            continue
        slots = 1
        for extra in parts[1:]:
            match = re.fullmatch(r"slots=(\d+)", extra)
            if not match or int(match.group(1)) < 1:
                problems.append(Problem("hostfile", f"bad field `{extra}` for host {name}",
                                        "write `slots=N` with N >= 1", where))
                slots = 0
                break
            slots = int(match.group(1))
        if not slots:
            continue
        if name in seen:
            problems.append(Problem("hostfile", f"duplicate host {name} (first on line {seen[name]})",
                                    "list each host once", where))
            continue
        seen[name] = number
        hosts.append(Host(name, slots))
    if not hosts and not problems:
        problems.append(Problem("hostfile", "no hosts", "add lines like `worker-1 slots=8`", source))
    return hosts, problems
