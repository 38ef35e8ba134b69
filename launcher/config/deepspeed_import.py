"""A DeepSpeed config a user brings (`backend.deepspeed_config`: a JSON file, or a mapping in the
recipe), taken in as the recipe's own values: one truth per setting.

DeepSpeed's config and the recipe can both hold the ZeRO stage and offload, the precision, gradient
clipping, the optimizer, the scheduler and the batch. For each, the value that runs is the value
run.json, the plan, the identity check, the checkpoint manifest, the console and the tracker show:

- only the config gives it: the recipe key takes the config's value (and the plan says where it
  came from: `Taken`); the key leaves the config, which keeps what the recipe has no key for;
- both give it and they differ: refused (exit 2), naming both places and the fix;
- "auto": resolved from the recipe, as the Hugging Face integration resolves it.

Settings that have no recipe equivalent are refused before start, never replaced in silence:
optimizers other than Adam/AdamW, NVMe offload, apex AMP, comet. DeepSpeed's scheduler runs as
DeepSpeed's own (`scheduler.name: deepspeed`: its LR is the one logged). The table of every key is
in the README. Plain data in, plain data out: this runs on the raw recipe, before it is typed, so
the schema checks the values that will run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.config.errors import Problem
from launcher.config.files import RECIPE_LIMIT, UnreadableFile, read_small_text
from launcher.config.json_positions import key_lines

KEY = "backend.deepspeed_config"
ADAM_TYPES = ("adam", "adamw")
# Adam parameters that our AdamW runs as DeepSpeed's would (adam_w_mode: decoupled weight decay,
# DeepSpeed's default for both names; torch_adam: which implementation, not what it computes).
ADAM_PARAMS = ("lr", "betas", "eps", "weight_decay", "adam_w_mode", "torch_adam", "bias_correction", "amsgrad")
SCHEDULER_AUTOS = {"warmup_min_lr": "0", "warmup_max_lr": "optimizer.lr", "warmup_num_steps": "scheduler.warmup_steps",
                   "total_num_steps": "train.steps"}
BUCKET_AUTOS = ("zero_optimization.reduce_bucket_size", "zero_optimization.stage3_prefetch_bucket_size",
                "zero_optimization.stage3_param_persistence_threshold")
# DeepSpeed's own whole-model save under ZeRO-3 ("auto" in accelerate's templates): launcher's export
# gathers the weights whatever it says.
GATHER_ON_SAVE = ("stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save")
MONITOR_DIR = "deepspeed_monitor"  # RUN_DIR/deepspeed_monitor/: DeepSpeed's own monitor files
SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest")
_DEFAULTS = {"backend.zero_stage": 2, "backend.offload_optimizer": False, "backend.offload_params": False,
             "precision": "auto", "optimizer.grad_clip": 1.0, "optimizer.name": "adamw", "optimizer.lr": 1e-3,
             "optimizer.betas": [0.9, 0.999], "optimizer.eps": 1e-8, "optimizer.weight_decay": 0.0,
             "scheduler.warmup_steps": 0, "train.steps": 100, "batch.global": 32, "batch.micro": 8,
             "tracking.backends": ["wandb"], "tracking.mode": "disabled"}


@dataclass(frozen=True)
class Taken:
    """A recipe key whose value came from an imported config."""

    key: str
    value: Any
    source: str  # "ds.json:12 zero_optimization.stage", or why DeepSpeed's default applies

    def render(self) -> str:
        return f"{self.key} = {json.dumps(self.value)}  <- {self.source}"


@dataclass
class Origin:
    """Where the config came from, for messages: a file with its key lines, or the recipe's mapping."""

    label: str  # the file's path, or "backend.deepspeed_config" in the recipe
    lines: dict[str, int]
    where: dict[str, str]  # the recipe's key locations (for an inline mapping)

    def line(self, key: str) -> str:
        """file:line of a key of the config."""
        if key in self.lines:
            return f"{self.label}:{self.lines[key]}"
        return self.where.get(f"{KEY}.{key}") or self.where.get(KEY) or self.label

    def at(self, key: str) -> str:
        """The key and where it is, for messages."""
        return f"{self.line(key)} {key if key in self.lines else f'{KEY}.{key}'}"


def read_config(value: Any, recipe_dir: Path, where: dict[str, str]) -> tuple[dict | None, Origin, list[Problem]]:
    """The config as data: a JSON file (relative to the recipe), read as JSON so every value is the
    file's; or a mapping from the recipe, where YAML 1.1's text for numbers (`2e8`) becomes the
    number JSON would read."""
    location = where.get(KEY, "")
    if isinstance(value, dict):
        return json_numbers(value), Origin(KEY, {}, where), []
    if not isinstance(value, str):
        return None, Origin(KEY, {}, where), [Problem(KEY, f"expected a JSON file's path or a mapping, got {value!r}",
                                                     "e.g. `deepspeed_config: ds_config.json`", location)]
    path = Path(value) if Path(value).is_absolute() else recipe_dir / value
    try:
        text = read_small_text(path, RECIPE_LIMIT)
    except UnreadableFile as error:
        return None, Origin(value, {}, where), [Problem(KEY, f"{path}: {error.message}",
                                                       _file_hint(error), location)]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return None, Origin(value, {}, where), [Problem(KEY, f"{path}:{error.lineno}:{error.colno}: not valid JSON: "
                                                       f"{error.msg}", "DeepSpeed reads it as JSON too", location)]
    if not isinstance(data, dict):
        return None, Origin(value, {}, where), [Problem(KEY, f"{path}: a DeepSpeed config is a JSON object",
                                                       "it starts with `{`", location)]
    lines = key_lines(text)
    for key, line in lines.items():  # later messages (DeepSpeed's own schema) point into the file
        where.setdefault(f"{KEY}.{key}", f"{path}:{line}")
    return data, Origin(str(path), lines, where), []


def json_numbers(data: Any) -> Any:
    """Text that JSON would read as a number, as that number (YAML 1.1 reads `2e8` as text)."""
    if isinstance(data, dict):
        return {k: json_numbers(v) for k, v in data.items()}
    if isinstance(data, list):
        return [json_numbers(v) for v in data]
    if isinstance(data, str) and data.strip() == data and data:
        try:
            number = json.loads(data)
        except ValueError:
            return data
        return number if isinstance(number, (int, float)) and not isinstance(number, bool) else data
    return data


def import_deepspeed(raw: dict, recipe_dir: Path, where: dict[str, str]) -> tuple[list[Taken], list[Problem]]:
    """Take the recipe's backend.deepspeed_config into the recipe (raw, in place); what was taken,
    and every problem."""
    backend = raw.get("backend")
    if not isinstance(backend, dict) or backend.get("name") != "deepspeed" or not backend.get("deepspeed_config"):
        return [], []
    config, origin, problems = read_config(backend["deepspeed_config"], recipe_dir, where)
    if config is None:
        return [], problems
    importer = _Importer(raw, config, origin, where)
    for step in (importer.stage, importer.offload, importer.precision, importer.clipping, importer.optimizer,
                 importer.scheduler, importer.batch, importer.monitors, importer.unsupported, importer.autos):
        step()
    backend["deepspeed_config"] = _without_empty(importer.config)
    return importer.taken, problems + importer.problems


def _without_empty(config: dict) -> dict:
    """Sections whose every key was taken into the recipe (`bf16: {}`, `offload_optimizer: {}`) left out."""
    out = {}
    for key, value in config.items():
        value = _without_empty(value) if isinstance(value, dict) else value
        if value != {}:
            out[key] = value
    return out


class _Importer:
    def __init__(self, raw: dict, config: dict, origin: Origin, where: dict[str, str]) -> None:
        self.raw, self.config, self.origin, self.where = raw, json.loads(json.dumps(config)), origin, where
        self.taken: list[Taken] = []
        self.problems: list[Problem] = []

    # -- the recipe side ----------------------------------------------------------------------

    def explicit(self, key: str) -> bool:
        return _lookup(self.raw, key)[0]

    def recipe_value(self, key: str) -> Any:
        present, value = _lookup(self.raw, key)
        return value if present else _DEFAULTS[key]

    def take(self, key: str, value: Any, config_key: str, because: str = "") -> None:
        """The recipe key gets the config's value, unless the recipe gives another one itself."""
        if self.explicit(key):
            mine = _lookup(self.raw, key)[1]
            if not same(mine, value):
                self.conflict(key, mine, value, config_key)
            return
        _assign(self.raw, key, value)
        self.where[key] = self.origin.line(config_key)
        self.taken.append(Taken(key, value, because or self.origin.at(config_key)))

    def conflict(self, key: str, mine: Any, theirs: Any, config_key: str) -> None:
        self.problem(config_key, f"{json.dumps(theirs)} ({self.origin.at(config_key)}) disagrees with `{key}`: "
                                 f"{json.dumps(json_numbers(mine))} ({self.where.get(key, 'the recipe')})",
                     f"keep one of them: remove `{config_key}` from the DeepSpeed config, or `{key}` from the "
                     "recipe")

    def problem(self, config_key: str, message: str, hint: str) -> None:
        self.problems.append(Problem(f"{KEY}.{config_key}", message, hint, self.origin.line(config_key)))

    # -- the settings, one by one -------------------------------------------------------------

    def stage(self) -> None:
        zero = self.config.get("zero_optimization")
        stage = zero.pop("stage", None) if isinstance(zero, dict) else None
        if stage is None:
            if not self.explicit("backend.zero_stage"):
                self.take("backend.zero_stage", 0, "zero_optimization.stage",
                          because="DeepSpeed's default: the config sets no zero_optimization.stage")
            return
        if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
            self.problem("zero_optimization.stage", f"must be 0, 1, 2 or 3, got {stage!r}", "ZeRO has stages 0-3")
            return
        self.take("backend.zero_stage", stage, "zero_optimization.stage")

    def offload(self) -> None:
        zero = self.config.get("zero_optimization")
        if not isinstance(zero, dict):
            return
        for section, key in (("offload_optimizer", "backend.offload_optimizer"),
                             ("offload_param", "backend.offload_params")):
            block = zero.get(section)
            if isinstance(block, dict) and "device" in block:
                device = block.pop("device")
                if device == "nvme":
                    self.problem(f"zero_optimization.{section}.device", "NVMe offload is not supported by launcher",
                                 f"offload to the CPU (device: cpu, {key}=true), or remove the section")
                elif device in ("cpu", "none"):
                    self.take(key, device == "cpu", f"zero_optimization.{section}.device")
                else:
                    self.problem(f"zero_optimization.{section}.device", f"unknown device {device!r}",
                                 "cpu, nvme or none")
        for legacy, key in (("cpu_offload", "backend.offload_optimizer"), ("cpu_offload_params",
                                                                          "backend.offload_params")):
            if legacy in zero:  # DeepSpeed's keys before offload_optimizer/offload_param
                self.take(key, bool(zero.pop(legacy)), f"zero_optimization.{legacy}")

    def precision(self) -> None:
        if "bfloat16" in self.config:  # DeepSpeed's other name for the bf16 section
            self.config["bf16"] = {**self.config.pop("bfloat16"), **(self.config.get("bf16") or {})}
        enabled = {}
        for name in ("fp16", "bf16"):
            section = self.config.get(name)
            if isinstance(section, dict) and "enabled" in section:
                value = section.pop("enabled")
                if value != "auto":
                    enabled[name] = value
        if not enabled:
            return  # absent or "auto": the recipe's precision decides (fp16/bf16 follow it)
        on = [name for name, value in enabled.items() if value is True]
        if len(on) > 1:
            self.problem("bf16.enabled", "fp16 and bf16 are both enabled", "enable one of them")
        elif any(not isinstance(value, bool) for value in enabled.values()):
            self.problem(next(f"{n}.enabled" for n, v in enabled.items() if not isinstance(v, bool)),
                         "must be true, false or \"auto\"", "e.g. \"enabled\": true")
        else:
            self.take("precision", on[0] if on else "fp32", f"{on[0] if on else next(iter(enabled))}.enabled")

    def clipping(self) -> None:
        if "gradient_clipping" in self.config:
            value = self.config.pop("gradient_clipping")
            if value != "auto":
                self.take("optimizer.grad_clip", value, "gradient_clipping")

    def optimizer(self) -> None:
        section = self.config.pop("optimizer", None)
        if section is None:
            return
        kind = str(section.get("type", "")) if isinstance(section, dict) else ""
        params = section.get("params") or {} if isinstance(section, dict) else {}
        if kind.lower() not in ADAM_TYPES:
            self.problem("optimizer.type", f"DeepSpeed's {kind or 'optimizer'} has no equivalent here: launcher builds "
                                           "AdamW or SGD itself (optimizer.name)",
                         "remove the `optimizer` section and set optimizer.name, lr, betas, eps and weight_decay in "
                         "the recipe")
            return
        unknown = [p for p in params if p not in ADAM_PARAMS]
        if unknown:
            self.problem(f"optimizer.params.{unknown[0]}", f"Adam parameter(s) {', '.join(unknown)} have no "
                         "equivalent in the recipe's AdamW", "remove them, or the whole section")
        adam_w = params.get("adam_w_mode", True)
        if params.get("bias_correction", True) is False or params.get("amsgrad", False) is True or (
                adam_w is False and params.get("weight_decay", 0) not in (0, "auto")):
            self.problem("optimizer.params", "this Adam variant (L2 weight decay, no bias correction or AMSGrad) "
                                             "is not the recipe's AdamW", "use decoupled weight decay (AdamW) or "
                                                                           "remove the section")
        self.take("optimizer.name", "adamw", "optimizer.type")
        for param in ("lr", "betas", "eps", "weight_decay"):
            if param in params and params[param] != "auto":
                self.take(f"optimizer.{param}", params[param], f"optimizer.params.{param}")

    def scheduler(self) -> None:
        section = self.config.get("scheduler")
        if section is None:
            return
        kind = section.get("type") if isinstance(section, dict) else None
        if kind not in SCHEDULERS:
            self.problem("scheduler.type", f"DeepSpeed has no scheduler {kind!r}", f"one of {', '.join(SCHEDULERS)}, "
                                                                                   "or remove the section")
            return
        params = section.get("params")
        for name, recipe_key in SCHEDULER_AUTOS.items():
            if isinstance(params, dict) and params.get(name) == "auto":
                params[name] = 0 if recipe_key == "0" else _number(self.recipe_value(recipe_key))
        if self.explicit("scheduler.name") and _lookup(self.raw, "scheduler.name")[1] != "deepspeed":
            self.conflict("scheduler.name", _lookup(self.raw, "scheduler.name")[1], section.get("type"),
                          "scheduler.type")
            return
        _assign(self.raw, "scheduler.name", "deepspeed")
        self.taken.append(Taken("scheduler.name", "deepspeed", f"{self.origin.at('scheduler.type')}: DeepSpeed's "
                                f"{section.get('type')} runs, with its own LR"))

    def batch(self) -> None:
        for config_key, recipe_key in (("train_batch_size", "batch.global"),
                                       ("train_micro_batch_size_per_gpu", "batch.micro")):
            if config_key in self.config:
                value = self.config.pop(config_key)
                if value != "auto":
                    self.take(recipe_key, value, config_key)
        if self.config.get("gradient_accumulation_steps") == "auto":
            del self.config["gradient_accumulation_steps"]  # derived by the plan for the world size

    def monitors(self) -> None:
        for name in ("tensorboard", "wandb"):
            block = self.config.pop(name, None)
            if not isinstance(block, dict) or not block.get("enabled"):
                continue
            backends = list(self.recipe_value("tracking.backends"))
            self.take("tracking.backends", backends + [name] if name not in backends else backends, f"{name}.enabled")
            if name == "wandb":
                if not self.explicit("tracking.mode"):
                    self.take("tracking.mode", "auto", "wandb.enabled")
                for config_key, recipe_key in (("project", "tracking.project"), ("team", "tracking.entity"),
                                               ("group", "tracking.group")):
                    if block.get(config_key):
                        self.take(recipe_key, block[config_key], f"wandb.{config_key}")
        csv = self.config.get("csv_monitor")
        if isinstance(csv, dict) and csv.get("enabled") and Path(str(csv.get("output_path", ""))).is_absolute():
            self.problem("csv_monitor.output_path", "an absolute path: DeepSpeed's monitor files are kept in the run "
                                                    f"directory ({MONITOR_DIR}/)", "give a relative path, or none")

    def unsupported(self) -> None:
        for key, why in (("amp", "apex AMP: use the recipe's precision (fp16 or bf16)"),
                         ("comet", "DeepSpeed's comet monitor: use a tracker (tracking.backends)")):
            block = self.config.get(key)
            if isinstance(block, dict) and block.get("enabled"):
                self.problem(f"{key}.enabled", f"not supported: {why}", f"remove the `{key}` section")

    def autos(self) -> None:
        """Every "auto" the steps above did not resolve: the bucket sizes wait for the model's hidden
        size (resolve_bucket_autos); anything else is refused, naming it."""
        zero = self.config.get("zero_optimization")
        for name in GATHER_ON_SAVE:
            if isinstance(zero, dict) and zero.get(name) == "auto":
                zero[name] = True  # launcher's export always gathers the whole weights under ZeRO-3
        for key in _auto_keys(self.config):
            if key not in BUCKET_AUTOS:
                self.problem(key, "\"auto\" has no value to take here", "write the value")


def resolve_bucket_autos(config: dict, hidden_size: int | None, where: str) -> tuple[dict, list[Problem]]:
    """The bucket sizes the Hugging Face integration derives from the model's hidden size H: reduce
    bucket H^2, ZeRO-3's prefetch bucket 0.9 H^2 and persistence threshold 10 H."""
    autos = [key for key in _auto_keys(config) if key in BUCKET_AUTOS]
    if not autos:
        return config, []
    if not hidden_size:
        return config, [Problem(f"{KEY}.{autos[0]}", "\"auto\" bucket sizes come from the model's hidden size, which "
                                "this recipe module does not give", "write the sizes as numbers", where)]
    values = {"reduce_bucket_size": hidden_size * hidden_size,
              "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
              "stage3_param_persistence_threshold": 10 * hidden_size}
    zero = {**config["zero_optimization"]}
    for key in autos:
        name = key.split(".", 1)[1]
        zero[name] = values[name]
    return {**config, "zero_optimization": zero}, []


def same(mine: Any, theirs: Any) -> bool:
    """Equal as values (the recipe's `3e-5` may still be YAML 1.1 text; lists against tuples)."""
    if isinstance(mine, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return len(mine) == len(theirs) and all(same(a, b) for a, b in zip(mine, theirs, strict=True))
    if isinstance(mine, bool) or isinstance(theirs, bool):
        return mine is theirs
    try:
        return math.isclose(float(mine), float(theirs), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return mine == theirs


def _number(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and not isinstance(value, float) else number


def _auto_keys(data: Any, path: str = "") -> list[str]:
    if isinstance(data, dict):
        return [k for key, value in data.items() for k in _auto_keys(value, f"{path}.{key}" if path else key)]
    return [path] if data == "auto" else []


def _lookup(raw: dict, key: str) -> tuple[bool, Any]:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _assign(raw: dict, key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = raw
    for part in sections:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def _file_hint(error) -> str:
    """The reader's own hint; for a path not found, where relative paths start."""
    return f"{error.hint} (a relative path starts at the recipe file)" if error.message == "file not found" \
        else error.hint
