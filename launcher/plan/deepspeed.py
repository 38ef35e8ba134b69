"""The DeepSpeed config a job runs with, as pure data from the recipe and the plan's arithmetic.

Built on the launcher side too (no torch), so that `validate` and `run` can have DeepSpeed's own
schema check it before anything starts: that check imports DeepSpeed, and so torch, which the
launcher's process never does; it runs in a process of its own
(launcher/backends/deepspeed_schema.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

from launcher.config.errors import Problem, RecipeError

SCHEMA_CHECK = "launcher.backends.deepspeed_schema"  # run as `python -m`, never imported here


def deepspeed_config(recipe, math, precision: str, torch_autocast: bool = False, cuda: bool = False) -> dict:
    """The DeepSpeed config for the recipe. With torch_autocast, bf16/fp16 run as torch autocast
    (fp32 weights and buffers, low-precision matmuls and convolutions) instead of DeepSpeed casting
    the weights (backends/deepspeed_backend.py: needs_torch_autocast). `cuda`: the ranks have GPUs
    (communication overlap and pinned memory)."""
    backend = recipe.backend
    zero: dict = {"stage": backend.zero_stage}
    if backend.zero_stage >= 1:
        zero.update({"overlap_comm": cuda, "contiguous_gradients": True,
                     "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8})
    if backend.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if backend.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    config = {
        "train_batch_size": math.global_batch,
        "train_micro_batch_size_per_gpu": math.micro,
        "gradient_accumulation_steps": math.accumulation,
        "gradient_clipping": recipe.optimizer.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16" and not torch_autocast},
        "fp16": {"enabled": precision == "fp16" and not torch_autocast, "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,  # the trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        # Our optimizer is a plain torch one (the LR is ours; fused on the CPU under offload, see
        # fused_optimizer_fits); allow it with offload.
        "zero_force_ds_cpu_optimizer": False,
        # DeepSpeed names only the Adam family as tested with ZeRO and refuses SGD otherwise. Both of
        # our optimizers update element by element, so ZeRO's flat partitions are exact for them
        # (the SGD equivalence test shows it).
        "zero_allow_untested_optimizer": True,
    }
    if torch_autocast and precision in ("bf16", "fp16"):
        config["torch_autocast"] = {"enabled": True, "dtype": precision}
    return merge(config, backend.deepspeed_config)


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_deepspeed_passthrough(path: str, recipe, math) -> None:
    """Raw DeepSpeed keys (backend.deepspeed_config) checked by DeepSpeed's own schema, in a process
    of its own; a RecipeError naming the key when it refuses them."""
    if recipe.backend.name != "deepspeed" or not recipe.backend.deepspeed_config:
        return
    config = deepspeed_config(recipe, math, "fp32")
    done = subprocess.run([sys.executable, "-m", SCHEMA_CHECK], input=json.dumps(config), capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"DeepSpeed's schema check failed to run:\n{done.stderr[-2000:]}")
    problems = json.loads(done.stdout.strip().splitlines()[-1])
    if problems:
        raise RecipeError(path, [Problem("backend.deepspeed_config", problems[0],
                                         "see https://www.deepspeed.ai/docs/config-json/", path)])
