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
from launcher.plan.cache import cache_root, remember

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


def check_before_start(path: str, loaded, launch_plan) -> None:
    """What would fail only after the ranks started, refused now (a RecipeError): DeepSpeed's own
    schema over the config the job will run, and a precision the local devices cannot run."""
    problems = precision_problems(loaded, launch_plan) + schema_problems([(loaded, launch_plan.math)])[0]
    if problems:
        raise RecipeError(path, problems)


def precision_problems(loaded, launch_plan) -> list[Problem]:
    """fp16 needs a GPU (DeepSpeed: "Type fp16 is not supported on your device"; torch's CPU
    autocast: bf16 only). Judged for ranks on this machine; other hosts are the hostfile's or
    Slurm's, which this machine cannot see."""
    from launcher.engines.registry import engine_named
    from launcher.plan.topology import count_local_gpus

    local = engine_named(launch_plan.engine).standalone or launch_plan.node_rank is not None
    if loaded.recipe.precision != "fp16" or not local or count_local_gpus():
        return []
    return [Problem("precision", "fp16 needs a GPU, and this machine has none (its ranks run on the CPU)",
                    "use bf16 or fp32 on the CPU (precision: auto picks fp32 here and bf16 on a GPU that has it)",
                    loaded.location("precision"))]


def schema_problems(jobs: list[tuple]) -> list[list[Problem]]:
    """For each (loaded recipe, batch math): the config DeepSpeed will be given, checked by
    DeepSpeed's own (pydantic) schema; every error it names, with the key it names and where that
    key was written. One process of its own checks them all (importing DeepSpeed takes seconds);
    a config it has judged is remembered for this DeepSpeed version (LAUNCHER_CACHE_DIR)."""
    configs = [_config_to_check(loaded.recipe, math) for loaded, math in jobs]
    verdicts = _verdicts([c for c in configs if c is not None])
    out = []
    for (loaded, _), config in zip(jobs, configs, strict=True):
        found = verdicts[_key(config)] if config is not None else []
        out.append([Problem(key := f"backend.deepspeed_config{'.' + name if name else ''}", message,
                            "see https://www.deepspeed.ai/docs/config-json/", loaded.location(key))
                    for name, message in found])
    return out


def _config_to_check(recipe, math) -> dict | None:
    if recipe.backend.name != "deepspeed" or not recipe.backend.deepspeed_config:
        return None
    return deepspeed_config(recipe, math, "fp32" if recipe.precision == "auto" else recipe.precision)


def _key(config: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:24]


def _verdicts(configs: list[dict]) -> dict[str, list]:
    """{config key: [(dotted key, message)]}: from the cache, the rest from one child process."""
    cache = _cache_dir()
    known, unknown = {}, {}
    for config in configs:
        key = _key(config)
        try:
            known[key] = json.loads((cache / f"{key}.json").read_text(encoding="utf-8")) if cache else None
        except (OSError, ValueError):
            known[key] = None
        if known[key] is None:
            unknown[key] = config
    if unknown:
        done = subprocess.run([sys.executable, "-m", SCHEMA_CHECK], input=json.dumps(list(unknown.values())),
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"DeepSpeed's schema check failed to run:\n{done.stderr[-2000:]}")
        for key, verdict in zip(unknown, json.loads(done.stdout.strip().splitlines()[-1]), strict=True):
            known[key] = verdict
            if cache:
                remember(cache / f"{key}.json", verdict)
    return known


def _cache_dir():
    """$LAUNCHER_CACHE_DIR/deepspeed-schema/<DeepSpeed and torch versions>, or None without them (the
    child then says so)."""
    from importlib import metadata

    try:
        version = f"deepspeed-{metadata.version('deepspeed')}-torch-{metadata.version('torch')}"
    except metadata.PackageNotFoundError:
        return None
    return cache_root() / "deepspeed-schema" / version


def batch_from_config(loaded, world_size: int):
    """A DeepSpeed config's gradient_accumulation_steps, with the batch key the recipe does not
    settle, as DeepSpeed computes the third of train_batch_size = micro x steps x world size: the
    global batch from micro x steps, or the micro-batch from the global batch. The recipe's own
    values win; what is left is checked against the plan (deepspeed_batch_problems)."""
    import dataclasses

    from launcher.config.deepspeed_import import Taken

    recipe = loaded.recipe
    config = recipe.backend.deepspeed_config
    if recipe.backend.name != "deepspeed" or not isinstance(config, dict):
        return loaded
    steps = config.get("gradient_accumulation_steps")
    from_config = {t.key for t in loaded.taken}
    if steps is None and "batch.global" in from_config and "batch.micro" not in from_config | loaded.explicit:
        steps = 1  # train_batch_size alone: DeepSpeed accumulates over 1 step and divides it by the world size
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        return loaded
    settled = {key for key in ("batch.global", "batch.micro")
               if key in loaded.explicit or any(t.key == key for t in loaded.taken)}
    batch, why = recipe.batch, f"gradient_accumulation_steps {steps} x world size {world_size}"
    if "batch.global" not in settled:
        batch = dataclasses.replace(batch, global_=batch.micro * steps * world_size)
        taken = Taken("batch.global", batch.global_, f"batch.micro {batch.micro} x {why}, as DeepSpeed computes "
                                                     "train_batch_size")
    elif "batch.micro" not in settled and batch.global_ % (steps * world_size) == 0:
        batch = dataclasses.replace(batch, micro=batch.global_ // (steps * world_size))
        taken = Taken("batch.micro", batch.micro, f"batch.global {batch.global_} / ({why}), as DeepSpeed computes "
                                                  "train_micro_batch_size_per_gpu")
    else:
        return loaded
    return dataclasses.replace(loaded, recipe=dataclasses.replace(recipe, batch=batch),
                               taken=(*loaded.taken, taken))
