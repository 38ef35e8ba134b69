"""Run names: one directory under output_dir per experiment, never outside it.

A name set in the recipe (`name:`) is used as written when it is a safe directory name (any
script: `日本` stays `日本`), and refused otherwise. Without one, the name comes from the recipe
file: a shipped recipe's own name (`mlp-tiny`), or, for any other file, its name plus a short hash
of its absolute path, so `exp1/config.yaml` and `exp3/config.yaml` get two directories.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

# \w is Unicode-aware: letters and digits of every script, and `_`.
_SAFE_NAME = re.compile(r"[\w][\w.+=@-]*")
_UNSAFE_RUN = re.compile(r"[^\w.+=@-]+")
MAX_NAME = 200  # bytes are what file systems limit (255); leave room for suffixes


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a run directory's name, or None."""
    if not name:
        return None
    if name in (".", "..") or not _SAFE_NAME.fullmatch(name):
        return (f"{name!r} is not a safe directory name: use letters and digits of any script, and "
                "`_ . + = @ -` (not first)")
    if len(name.encode("utf-8")) > MAX_NAME:
        return f"is {len(name.encode('utf-8'))} bytes long; at most {MAX_NAME}"
    return None


def run_name(recipe_name: str, recipe_path: str, shipped: bool = False) -> str:
    """The run directory's name (assumes name_problem(recipe_name) is None)."""
    if recipe_name:
        return unicodedata.normalize("NFC", recipe_name)
    stem = _UNSAFE_RUN.sub("-", unicodedata.normalize("NFC", Path(recipe_path).stem)).lstrip(".-")
    stem = stem.encode("utf-8")[:MAX_NAME - 9].decode("utf-8", "ignore") or "run"
    if shipped:
        return stem
    where = os.path.realpath(recipe_path).encode("utf-8", "surrogateescape")
    return f"{stem}-{hashlib.sha256(where).hexdigest()[:8]}"


def default_run_dir(output_dir: str, name: str) -> str:
    # Stable per recipe: re-running the same command (or a Slurm requeue) finds its checkpoints.
    return str(Path(output_dir) / name)


def moved_run_dir(output_dir: str, name: str, fixed: dict) -> str | None:
    """The run directory this recipe had before its project moved: the hash in `name` follows the
    recipe file's path, so after `mv projA projB` the same command would find a new, empty one.
    A sibling `<stem>-<hash>` whose run.json records a recipe file that no longer exists and the
    same experiment (identity.py's fixed keys) is that run; None when there is none, or more."""
    import json

    stem, _, digest = name.rpartition("-")
    if not stem or len(digest) != 8:
        return None
    found = []
    for candidate in Path(output_dir).glob(f"{glob_escape(stem)}-*"):
        if candidate.name == name or not re.fullmatch(re.escape(stem) + r"-[0-9a-f]{8}", candidate.name):
            continue
        try:
            record = json.loads((candidate / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        recorded = record.get("recipe_file") if isinstance(record, dict) else None
        if recorded and not Path(recorded).exists() and record.get("fixed") == fixed:
            found.append(str(candidate))
    return found[0] if len(found) == 1 else None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
