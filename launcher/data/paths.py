"""Which local path a data spec names, checked when a recipe is validated, not after the ranks start.

Specs are `package:NAME` (data that packages ship: checked where it is read, on the nodes),
`hf:DIR` and `json:FILE` (local files read with `datasets`), or a plain file or directory. A
missing local path is a recipe error of `launcher validate`/`plan`/`run`, before anything starts.
Relative paths are relative to the directory the launcher runs in, where the ranks run too.
Standard library only: the CLI imports it.
"""

from __future__ import annotations

import os

_LOCAL_PREFIXES = ("hf:", "json:")


def missing_local_path(spec: str) -> str | None:
    """The local path in `spec` when it does not exist; None when it does or when `spec` names none."""
    if not spec or spec.startswith("package:"):
        return None
    path = spec.split(":", 1)[1] if spec.startswith(_LOCAL_PREFIXES) else spec
    return None if os.path.exists(os.path.expanduser(path)) else path


def path_problems(**specs: str) -> list[tuple[str, str, str]]:
    """(key, message, hint) for each spec whose local path is missing, for a config's check()."""
    out = []
    for key, spec in specs.items():
        missing = missing_local_path(spec)
        if missing is not None:
            out.append((key, f"{missing} does not exist (from {os.getcwd()})",
                        "give an existing file or directory; relative paths start where `launcher` runs"))
    return out
