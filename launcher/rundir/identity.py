"""What a run directory's checkpoints mean, recorded once in run.json when the run starts.

Two kinds of recipe keys are recorded:
- fixed: the recipe module, `model`, `data`, `seed`, `precision`, `optimizer.name`,
  `batch.global`, `backend.name` with its checkpoint format (`backend.strategy` for Accelerate,
  `backend.zero_stage` for DeepSpeed) and `checkpoint.dir`. A checkpoint cannot be continued
  under other values: the model would be another model, the data another stream. A recipe module
  may exempt keys that change no checkpoint (`IDENTITY_EXEMPT`, e.g. `data.workers`).
- schedule: `train.steps`, every other `optimizer` key and every `scheduler` key. Continuing
  with other values is a common, deliberate act (train longer, a new end of the LR schedule):
  `launcher run --allow-schedule-change` does it, and run.json keeps the history.
Everything else (logging, evaluation, checkpoint frequency, tracking, the cluster, the world
size) may change between runs of one directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FIXED_KEYS = ("recipe", "model", "data", "seed", "precision", "optimizer.name", "batch.global", "backend.name",
              "checkpoint.dir")
# The key that decides the checkpoint's format, per backend: the other backend's key is ignored.
FORMAT_KEYS = {"accelerate": "backend.strategy", "deepspeed": "backend.zero_stage"}
SCHEDULE_KEYS = ("train.steps", "optimizer", "scheduler")


@dataclass(frozen=True)
class Change:
    key: str
    recorded: Any
    now: Any

    def render(self) -> str:
        return f"{self.key}: {_show(self.recorded)} (this run) -> {_show(self.now)} (now)"


@dataclass(frozen=True)
class Identity:
    fixed: dict[str, Any]
    schedule: dict[str, Any]

    @classmethod
    def of(cls, resolved: dict, exempt: Iterable[str] = ()) -> Identity:
        """From a resolved recipe (recipe_to_dict, or a run's recipe.yaml)."""
        flat = _flatten(_plain(resolved))
        skip = set(exempt)
        backend = flat.get("backend.name")
        fixed_keys = (*FIXED_KEYS, FORMAT_KEYS[backend]) if backend in FORMAT_KEYS else FIXED_KEYS
        fixed = {k: v for k, v in flat.items() if _under(k, fixed_keys) and k not in skip}
        schedule = {k: v for k, v in flat.items()
                    if _under(k, SCHEDULE_KEYS) and k != "optimizer.name" and k not in skip}
        return cls(fixed, schedule)

    @classmethod
    def from_record(cls, record: dict) -> Identity:
        return cls(dict(record.get("fixed") or {}), dict(record.get("schedule") or {}))

    def changes(self, now: Identity) -> tuple[list[Change], list[Change]]:
        """(fixed changes, schedule changes) from this recorded identity to `now`."""
        return _diff(self.fixed, now.fixed), _diff(self.schedule, now.schedule)


def _diff(recorded: dict, now: dict) -> list[Change]:
    # A key on one side only is a schema that changed between launcher versions, or a key a recipe
    # module exempts: not a change of the experiment.
    return [Change(key, recorded[key], now[key]) for key in sorted(recorded.keys() & now.keys())
            if recorded[key] != now[key]]


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def _plain(data: Any) -> Any:
    """JSON's view of the values (tuples become lists), so a recorded identity compares equal."""
    return json.loads(json.dumps(data, default=str))


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
