"""Durations as the console shows them (12s, 4m05s, 3h07m): the ranks' step lines and the
launcher's live bar both print them. Standard library only: either side may import it."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """12s, 4m05s, 3h07m: short and sortable by eye."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
