"""DeepSpeed's own schema over a config: `python -m launcher.backends.deepspeed_schema < config.json`
prints a JSON list of problems ([] when DeepSpeed takes it). The launcher runs it before a job
starts (launcher/plan/deepspeed.py), in a process of its own, because importing DeepSpeed imports
torch; the ranks call passthrough_problems() in-process before they build the engine.
"""

from __future__ import annotations

import json
import sys


def passthrough_problems(config: dict) -> list[str]:
    """Validate the merged config with DeepSpeed's own (pydantic) schema; [] when it is valid.

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
    try:
        DeepSpeedConfig(config)
    except Exception as exc:  # noqa: BLE001 - pydantic and DeepSpeed raise several types
        return [" ".join(str(exc).split())[:600]]
    return []


if __name__ == "__main__":
    problems = passthrough_problems(json.load(sys.stdin))
    print("\n" + json.dumps(problems))  # the last line: anything DeepSpeed prints comes before it
