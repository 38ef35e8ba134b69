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
_SLOTS = re.compile(r"slots=(\d+)")
# The common line, `name` or `name slots=N` and nothing else, in one match: a 10,000-host file
# then parses in a few milliseconds. Anything else takes the careful path that names the problem.
_PLAIN_LINE = re.compile(r"[ \t]*([A-Za-z0-9_][A-Za-z0-9_.-]{0,252})(?:[ \t]+slots=0*([1-9]\d*))?[ \t]*")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    # Which local devices (slot indices) this host uses; None means all of 0..slots-1. Set by
    # include/exclude filters and exported as CUDA_VISIBLE_DEVICES on that host.
    slot_ids: tuple[int, ...] | None = None

    @property
    def used(self) -> tuple[int, ...]:
        return self.slot_ids if self.slot_ids is not None else tuple(range(self.slots))


def host_key(name: str) -> str:
    """Host names are case-insensitive and `w1.` (fully qualified) is `w1`: one node, one key."""
    return name.rstrip(".").lower()


def parse_hostfile(text: str, source: str) -> tuple[list[Host], list[Problem]]:
    hosts: list[Host] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    if text.startswith("\ufeff"):
        problems.append(Problem("hostfile", "the file starts with a UTF-8 byte-order mark (U+FEFF, invisible in most "
                                "editors), which would become part of the first host name",
                                "save the file as UTF-8 without a BOM", f"{source}:1"))
        text = text[1:]
    for number, line in enumerate(text.splitlines(), start=1):
        plain = _PLAIN_LINE.fullmatch(line)
        if plain:
            name, key = plain.group(1), host_key(plain.group(1))
            if key not in seen:
                seen[key] = number
                hosts.append(Host(name, int(plain.group(2) or 1)))
                continue
        where = f"{source}:{number}"
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        parts = content.split()
        name = parts[0]
        if not _HOST.match(name):
            problems.append(Problem("hostfile", f"{ascii(name)} is not a valid hostname",
                                    "hostnames use letters, digits, `.`, `-` and `_`, and never start with `-`", where))
            continue
        slots = _slots(parts[1:], name, where, problems)
        if not slots:
            continue
        key = host_key(name)
        if key in seen:
            problems.append(Problem("hostfile", f"duplicate host {name} (first on line {seen[key]}; host names "
                                    "ignore case and a trailing dot)", "list each host once", where))
            continue
        seen[key] = number
        hosts.append(Host(name, slots))
    if not hosts and not problems:
        problems.append(Problem("hostfile", "no hosts", "add lines like `worker-1 slots=8`", source))
    return hosts, problems


def _slots(fields: list[str], name: str, where: str, problems: list[Problem]) -> int:
    """N of the line's one `slots=N` (1 without it); 0 after recording a problem."""
    if len(fields) > 1:
        problems.append(Problem("hostfile", f"host {name} has {len(fields)} fields ({' '.join(fields)})",
                                "write one `slots=N` per host", where))
        return 0
    if not fields:
        return 1
    match = _SLOTS.fullmatch(fields[0])
    if not match or int(match.group(1)) < 1:
        problems.append(Problem("hostfile", f"bad field `{fields[0]}` for host {name}",
                                "write `slots=N` with N >= 1", where))
        return 0
    return int(match.group(1))


def apply_filters(hosts: list[Host], include: str, exclude: str, source: str) -> tuple[list[Host], list[Problem]]:
    """DeepSpeed's filters: `host1:0,1@host2` keeps (include) or drops (exclude) hosts or slots.

    A bare host name means all of its slots. Include and exclude are exclusive, as in DeepSpeed.
    """
    if include and exclude:
        return hosts, [Problem("--include/--exclude", "both filters given",
                               "use one: --include lists what to keep, --exclude what to drop", source)]
    spec, keep = (include, True) if include else (exclude, False)
    if not spec:
        return hosts, []
    flag = "--include" if keep else "--exclude"
    by_name = {host_key(h.name): h for h in hosts}
    selected: dict[str, set[int]] = {}
    problems: list[Problem] = []
    for part in spec.split("@"):
        name, _, slot_text = part.strip().partition(":")
        if host_key(name) not in by_name:
            problems.append(Problem(flag, f"unknown host `{name}` in `{spec}`",
                                    f"hosts in {source}: {', '.join(h.name for h in hosts) or 'none'}"))
            continue
        host = by_name[host_key(name)]
        name = host.name
        if not slot_text:
            selected[name] = set(range(host.slots))
            continue
        try:
            ids = {int(x) for x in slot_text.split(",")}
        except ValueError:
            problems.append(Problem(flag, f"bad slot list `{slot_text}` for {name}", "write host:0,1 (integers)"))
            continue
        bad = sorted(i for i in ids if not 0 <= i < host.slots)
        if bad:
            problems.append(Problem(flag, f"slot(s) {bad} out of range for {name} (slots={host.slots})",
                                    f"use indices 0..{host.slots - 1}"))
            continue
        selected.setdefault(name, set()).update(ids)
    if problems:
        return hosts, problems
    result = []
    for host in hosts:
        chosen = selected.get(host.name, set())
        ids = sorted(chosen) if keep else sorted(set(host.used) - chosen)
        if ids:
            whole = ids == list(range(host.slots))
            result.append(Host(host.name, len(ids), None if whole else tuple(ids)))
    if not result:
        problems.append(Problem(flag, f"`{spec}` leaves no hosts", "keep at least one host and slot", source))
    return result, problems
