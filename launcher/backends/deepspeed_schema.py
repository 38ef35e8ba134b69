"""DeepSpeed's own schema over configs: `python -m launcher.backends.deepspeed_schema < configs.json`
(a JSON list of configs) prints, as its last line, a JSON list of each one's problems ([] when
DeepSpeed takes it). The launcher runs it before a job
starts (launcher/plan/deepspeed.py), in a process of its own, because importing DeepSpeed imports
torch; the ranks call passthrough_problems() in-process before they build the engine.
"""

from __future__ import annotations

import json
import sys


def passthrough_problems(config: dict) -> list[tuple[str, str]]:
    """Validate the merged config with DeepSpeed's own (pydantic) schema: (dotted key, message) for
    every error it names, [] when it is valid.

    DeepSpeed forbids unknown keys inside its sections (zero_optimization, ...) but ignores unknown
    top-level keys, so a typo there stays unnoticed by both of us. Outside a process group it
    checks the batch keys for one process, so they are given to it as one process's (the plan
    checks them for the real world size).
    """
    import torch
    from deepspeed.runtime.config import DeepSpeedConfig

    config = dict(config)
    micro, accumulation = config.get("train_micro_batch_size_per_gpu"), config.get("gradient_accumulation_steps")
    if not torch.distributed.is_initialized() and isinstance(micro, int) and isinstance(accumulation, int):
        config["train_batch_size"] = micro * accumulation
    found: list[tuple[str, str]] = []
    for _ in range(len(config) + 1):  # DeepSpeed stops at the first section that fails: check on without it
        try:
            DeepSpeedConfig(config)
        except Exception as exc:  # noqa: BLE001 - pydantic and DeepSpeed raise several types
            errors = _errors(exc, config)
            found += errors
            section = errors[0][0].split(".", 1)[0]
            if not section or section not in config:
                break
            config = {k: v for k, v in config.items() if k != section}
        else:
            break
    return found


def _errors(exc: Exception, config: dict) -> list[tuple[str, str]]:
    """Each of pydantic's errors with its location; anything else as DeepSpeed worded it, whole."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return [(_key(getattr(exc, "title", ""), error.get("loc", ()), config),
                     f"{error.get('msg')} (got {error.get('input')!r})") for error in errors()]
        except TypeError:
            pass
    return [("", " ".join(str(exc).split()))]


# DeepSpeed validates each section with a model of its own; pydantic's locations start inside it.
_SECTIONS = {"DeepSpeedZeroConfig": "zero_optimization", "DeepSpeedFP16Config": "fp16", "DeepSpeedBF16Config": "bf16",
             "TensorBoardConfig": "tensorboard", "WandbConfig": "wandb", "CSVConfig": "csv_monitor",
             "CometConfig": "comet", "DeepSpeedFlopsProfilerConfig": "flops_profiler",
             "DeepSpeedActivationCheckpointingConfig": "activation_checkpointing"}


def _key(title: str, loc: tuple, config: dict) -> str:
    """The dotted key of an error: its section (by the model that raised it, else the one section
    whose keys hold the first part of the location), then pydantic's location inside it."""
    inner = ".".join(str(part) for part in loc)
    section = _SECTIONS.get(title)
    if section is None and loc:
        holders = [k for k, v in config.items() if isinstance(v, dict) and loc[0] in v]
        section = holders[0] if len(holders) == 1 else None
    return f"{section}.{inner}" if section and inner else section or inner


if __name__ == "__main__":
    verdicts = [passthrough_problems(config) for config in json.load(sys.stdin)]
    print("\n" + json.dumps(verdicts))  # the last line: anything DeepSpeed prints comes before it
