"""Image files checked before start: each file of an ImageFolder tree read at its two ends, so an
empty file, a text file named .jpg or a truncated JPEG or PNG is named at `launcher validate`,
`plan` and `run`, not as a traceback in a rank (or a half-built store) after the job started.

Standard library only: the CLI imports it. The check reads a few bytes per file; past
MAX_CHECKED files, the rest are checked where they are read (the store build, the loaders), which
name the file too.
"""

from __future__ import annotations

import os

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
MAX_CHECKED = 200_000
_TAIL = 1024  # a JPEG's end-of-image marker may be followed by a few bytes of padding


def image_problem(path: str) -> str | None:
    """Why the file cannot be an image of its suffix, or None (not a full decode)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(12)
            handle.seek(max(0, size - _TAIL))
            tail = handle.read(_TAIL)
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if size == 0:
        return "is empty (0 bytes)"
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".jpg", ".jpeg"):
        if not head.startswith(b"\xff\xd8\xff"):
            return "is not a JPEG file (its first bytes are not a JPEG's)"
        if b"\xff\xd9" not in tail:
            return "is a truncated JPEG (no end-of-image marker)"
    elif suffix == ".png":
        if not head.startswith(b"\x89PNG\r\n\x1a\n"):
            return "is not a PNG file (its first bytes are not a PNG's)"
        if b"IEND" not in tail[-12:]:
            return "is a truncated PNG (no IEND chunk)"
    elif suffix == ".bmp" and not head.startswith(b"BM"):
        return "is not a BMP file"
    elif suffix == ".webp" and not (head.startswith(b"RIFF") and head[8:12] == b"WEBP"):
        return "is not a WebP file"
    return None


def folder_image_problems(tree: str, limit: int = 20) -> list[str]:
    """`file: why` for the first `limit` bad images under an ImageFolder tree's train/ and val/."""
    found, checked = [], 0
    for split in ("train", "val"):
        for directory, _, names in sorted(os.walk(os.path.join(tree, split))):
            for name in sorted(names):
                if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                    continue
                checked += 1
                if checked > MAX_CHECKED:
                    return found
                path = os.path.join(directory, name)
                problem = image_problem(path)
                if problem:
                    found.append(f"{path} {problem}")
                    if len(found) >= limit:
                        return found
    return found
