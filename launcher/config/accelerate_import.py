"""An accelerate config file (the output of `accelerate config`), taken in as the recipe's values.

`backend.accelerate_config: accelerate.yaml` in a recipe (or as an override) reads the file and
maps each key it knows into the recipe, with the same rule as a DeepSpeed config: what only the
file gives is taken, and the plan says where it came from; what both give must agree, or the run is
refused, naming both. What has no equivalent here is refused with the reason when it would change
what runs (fp8, tensor or context parallelism, XPUs, MPI, SageMaker, CPU offload of FSDP), and
listed as not mapped when it only concerns how accelerate itself starts (`ignored`). `launcher
convert FILE` prints the same mapping as recipe keys. The README has the table.

Two habits differ: `num_processes` is the total over all machines in accelerate and per node
here, so it is divided by `num_machines`; and `machine_rank` belongs to one machine, so it is the
`--node-rank` of that machine's `launcher run`, not a recipe key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.config.deepspeed_import import Taken, _assign, _lookup, same
from launcher.config.errors import Problem
from launcher.config.files import RECIPE_LIMIT, UnreadableFile, read_small_text
from launcher.config.yaml_load import load_yaml

KEY = "backend.accelerate_config"
PRECISIONS = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}
BACKENDS = {"NO": ("accelerate", "ddp"), "MULTI_GPU": ("accelerate", "ddp"), "MULTI_CPU": ("accelerate", "ddp"),
            "FSDP": ("accelerate", "fsdp"), "DEEPSPEED": ("deepspeed", None)}
# Keys that only tell accelerate how to start itself, or that a launcher run does another way.
IGNORED = {
    "compute_environment": "LOCAL_MACHINE is the only one a launcher run knows",
    "main_training_function": "the recipe module's build() is what runs",
    "machine_rank": "one machine's rank: give `--node-rank N` to that machine's `launcher run`",
    "rdzv_backend": "launcher uses torchrun's c10d rendezvous on the first node (or cluster.master_addr)",
    "same_network": "the nodes dial the first node (or cluster.master_addr) on the network they share",
    "debug": "accelerate's collective checks; launcher names a stuck rank by its own checks",
    "downcast_bf16": "TPUs only",
    "enable_cpu_affinity": "launcher shares a node's cores among its ranks (OMP_NUM_THREADS)",
    "tpu_env": "TPUs only", "tpu_use_cluster": "TPUs only", "tpu_use_sudo": "TPUs only", "tpu_name": "TPUs only",
    "tpu_zone": "TPUs only", "commands": "TPU pods only", "command_file": "TPU pods only",
    "megatron_lm_config": "empty: Megatron-LM is not used",
    "ipex_config": "Intel extension settings: not used",
}
FSDP_IGNORED = {
    "fsdp_auto_wrap_policy": "launcher shards the model with FSDP2's fully_shard as one unit: the same values, "
                             "another memory profile",
    "fsdp_transformer_layer_cls_to_wrap": "see fsdp_auto_wrap_policy",
    "fsdp_min_num_params": "see fsdp_auto_wrap_policy",
    "fsdp_backward_prefetch": "FSDP2 prefetches by itself",
    "fsdp_forward_prefetch": "FSDP2 prefetches by itself",
    "fsdp_cpu_ram_efficient_loading": "the recipe module builds the model on every rank",
    "fsdp_sync_module_states": "every rank builds the same weights from the same seed",
    "fsdp_use_orig_params": "FSDP2 keeps the original parameters",
    "fsdp_state_dict_type": "launcher's checkpoints hold the full state, which any world size loads",
    "fsdp_version": "launcher runs FSDP2",
    "fsdp_ignored_modules": "none are ignored",
}
DEEPSPEED_IGNORED = {
    "zero3_init_flag": "the recipe module builds the model, then DeepSpeed partitions it",
    "zero3_save_16bit_model": "launcher's export gathers the whole weights under ZeRO-3",
    "deepspeed_exclusion_filter": "give `--exclude` to `launcher run`",
    "deepspeed_inclusion_filter": "give `--include` to `launcher run`",
}


def import_accelerate(raw: dict, recipe_dir: Path,
                      where: dict[str, str]) -> tuple[list[Taken], list[str], list[Problem]]:
    """Take backend.accelerate_config into the raw recipe (in place): (what was taken, what was not
    mapped and why, problems). The key is emptied: the values now live in the recipe."""
    backend = raw.get("backend")
    value = backend.get("accelerate_config") if isinstance(backend, dict) else None
    if not value:
        return [], [], []
    location = where.get(KEY, "")
    path = Path(value) if Path(str(value)).is_absolute() else recipe_dir / str(value)
    config, lines, problems = read_accelerate(path, location)
    backend["accelerate_config"] = ""
    if config is None:
        return [], [], problems
    mapper = AccelerateMapper(raw, config, str(path), lines, where)
    mapper.map()
    return mapper.taken, mapper.ignored, problems + mapper.problems


def read_accelerate(path: Path, location: str) -> tuple[dict | None, dict[str, str], list[Problem]]:
    """The file as data (the recipe's safe YAML reader: no tags, no surprises), and its key lines."""
    try:
        text = read_small_text(path, RECIPE_LIMIT)
    except UnreadableFile as error:
        return None, {}, [Problem(KEY, f"{path}: {error.message}", _file_hint(error), location)]
    data, lines, problems = load_yaml(text, str(path))
    if problems:  # as the recipe's own would be: each naming its line in the file
        return None, lines, [Problem(f"{KEY}.{p.path}" if p.path else KEY, p.message, p.hint, p.where)
                             for p in problems]
    if not isinstance(data, dict):
        return None, lines, [Problem(KEY, f"{path}: an accelerate config is a mapping of keys",
                                     "the output of `accelerate config`", location)]
    return data, lines, []


class AccelerateMapper:
    def __init__(self, raw: dict, config: dict, label: str, lines: dict[str, str], where: dict[str, str]) -> None:
        self.raw, self.config, self.label, self.lines, self.where = raw, config, label, lines, where
        self.taken: list[Taken] = []
        self.ignored: list[str] = []
        self.problems: list[Problem] = []

    def at(self, key: str) -> str:
        return f"{self.lines.get(key, self.label)} {key}"

    def take(self, recipe_key: str, value: Any, key: str) -> None:
        present, mine = _lookup(self.raw, recipe_key)
        if present:
            if not same(mine, value):
                self.refuse(key, f"{value!r} ({self.at(key)}) disagrees with `{recipe_key}`: {mine!r} "
                                 f"({self.where.get(recipe_key, 'the recipe')})",
                            f"keep one of them: remove `{key}` from the accelerate config, or `{recipe_key}` "
                            "from the recipe")
            return
        _assign(self.raw, recipe_key, value)
        self.where[recipe_key] = self.lines.get(key, self.label)
        self.taken.append(Taken(recipe_key, value, self.at(key)))

    def refuse(self, key: str, message: str, hint: str) -> None:
        self.problems.append(Problem(f"{KEY}.{key}", message, hint, self.lines.get(key, self.label)))

    def ignore(self, key: str, why: str) -> None:
        self.ignored.append(f"{key}: {why}")

    def map(self) -> None:
        handlers = {"distributed_type": self.distributed, "num_machines": self.machines,
                    "num_processes": self.processes, "mixed_precision": self.precision,
                    "main_process_ip": self.master_addr, "main_process_port": self.master_port,
                    "fsdp_config": self.fsdp, "deepspeed_config": self.deepspeed, "gpu_ids": self.gpu_ids,
                    "use_cpu": self.use_cpu, "dynamo_config": self.dynamo, "dynamo_backend": self.dynamo,
                    "compute_environment": self.environment, "fp8_config": self.fp8,
                    "parallelism_config": self.parallelism, "mpirun_config": self.mpi}
        for key, value in self.config.items():
            if key in handlers:
                handlers[key](key, value)
            elif key in IGNORED:
                if key == "megatron_lm_config" and value:
                    self.refuse(key, "Megatron-LM parallelism is not supported", "remove it")
                else:
                    self.ignore(key, IGNORED[key])
            else:
                self.refuse(key, "not an accelerate config key launcher knows", "remove it (a typo?)")

    # -- the keys, one by one ---------------------------------------------------------------------

    def distributed(self, key: str, value: Any) -> None:
        value = "NO" if value is False else value  # YAML 1.1 reads an unquoted NO as false
        if value not in BACKENDS:
            self.refuse(key, f"{value!r}: launcher runs DDP, FSDP and DeepSpeed on GPUs and CPUs",
                        "NO, MULTI_GPU, MULTI_CPU, FSDP or DEEPSPEED")
            return
        name, strategy = BACKENDS[value]
        self.take("backend.name", name, key)
        if strategy:
            self.take("backend.strategy", strategy, key)

    def machines(self, key: str, value: Any) -> None:
        if isinstance(value, int) and value > 1:
            self.take("cluster.nodes", value, key)

    def processes(self, key: str, value: Any) -> None:
        machines = self.config.get("num_machines") or 1
        if not isinstance(value, int) or not isinstance(machines, int) or value <= 0 or machines <= 0:
            self.refuse(key, f"{value!r} is not a count of processes", "a whole number")
        elif value % machines:
            self.refuse(key, f"{value} processes in all cannot be spread evenly over num_machines {machines}",
                        "accelerate counts the processes of every machine together: a multiple of num_machines")
        else:
            self.take("cluster.nproc_per_node", value // machines, key)

    def precision(self, key: str, value: Any) -> None:
        value = "no" if value is False else value  # YAML 1.1 reads an unquoted no as false
        if value == "fp8":
            self.refuse(key, "fp8 (Transformer Engine, MS-AMP) is not supported", "bf16 or fp16")
        elif value in PRECISIONS:
            self.take("precision", PRECISIONS[value], key)
        else:
            self.refuse(key, f"unknown precision {value!r}", "no, fp16 or bf16")

    def master_addr(self, key: str, value: Any) -> None:
        if value:
            self.take("cluster.master_addr", str(value), key)

    def master_port(self, key: str, value: Any) -> None:
        if value:
            self.take("cluster.master_port", value, key)

    def uses(self, key: str, kind: str) -> bool:
        """accelerate reads fsdp_config only for FSDP, deepspeed_config only for DEEPSPEED."""
        if self.config.get("distributed_type") == kind:
            return True
        if self.config.get(key):
            self.ignore(key, f"accelerate reads it only with distributed_type {kind}")
        return False

    def fsdp(self, key: str, value: Any) -> None:
        if not self.uses(key, "FSDP"):
            return
        for name, setting in (value or {}).items():
            where = f"{key}.{name}"
            if name in FSDP_IGNORED:
                self.ignore(where, FSDP_IGNORED[name])
            elif name == "fsdp_sharding_strategy" and setting not in ("FULL_SHARD", 1):
                self.refuse(where, f"{setting!r}: launcher's FSDP shards parameters, gradients and optimizer state "
                                   "(FULL_SHARD)", "use FULL_SHARD, or DeepSpeed ZeRO-2 for sharded gradients only")
            elif name == "fsdp_reshard_after_forward" and setting is False:
                self.refuse(where, "keeping parameters gathered after forward (SHARD_GRAD_OP) is not supported",
                            "true, or DeepSpeed ZeRO-2")
            elif name == "fsdp_offload_params" and setting:
                self.refuse(where, "FSDP CPU offload is not supported", "DeepSpeed ZeRO-3 with offload_params")
            elif name == "fsdp_activation_checkpointing":
                self.take("train.activation_checkpointing", bool(setting), where)
            elif name not in ("fsdp_sharding_strategy", "fsdp_reshard_after_forward", "fsdp_offload_params"):
                self.refuse(where, "an FSDP key launcher does not know", "remove it")

    def deepspeed(self, key: str, value: Any) -> None:
        if not self.uses(key, "DEEPSPEED"):
            return
        value = value or {}
        inline: dict = {}
        for name, setting in value.items():
            where = f"{key}.{name}"
            if name == "deepspeed_config_file":
                directory = Path(self.label).parent
                self.take("backend.deepspeed_config", str((directory / str(setting)).resolve()), where)
            elif name == "zero_stage":
                inline.setdefault("zero_optimization", {})["stage"] = setting
            elif name in ("offload_optimizer_device", "offload_param_device"):
                section = "offload_optimizer" if name.startswith("offload_optimizer") else "offload_param"
                inline.setdefault("zero_optimization", {})[section] = {"device": setting}
            elif name in ("gradient_accumulation_steps", "gradient_clipping"):
                inline[name] = setting
            elif name == "deepspeed_hostfile":
                self.take("cluster.hostfile", str((Path(self.label).parent / str(setting)).resolve()), where)
            elif name == "deepspeed_multinode_launcher":
                self.launcher(where, setting)
            elif name in DEEPSPEED_IGNORED:
                self.ignore(where, DEEPSPEED_IGNORED[name])
            else:
                self.refuse(where, "a DeepSpeed plugin key launcher does not know", "remove it")
        if inline and "deepspeed_config_file" in value:
            self.ignore(key, "with deepspeed_config_file, accelerate reads its other keys from that file; so does "
                             "launcher")
        elif inline:
            self.take("backend.deepspeed_config", inline, key)

    def launcher(self, key: str, value: Any) -> None:
        if value == "pdsh":
            self.take("cluster.remote_shell", "pdsh", key)
        elif value in ("standard", "ssh"):
            self.ignore(key, "launcher starts one torchrun per host over pdsh or ssh (cluster.remote_shell)")
        else:
            self.refuse(key, f"{value!r}: MPI launchers are not supported", "pdsh or ssh with a hostfile")

    def gpu_ids(self, key: str, value: Any) -> None:
        if value not in ("all", None, ""):
            self.take("cluster.env.CUDA_VISIBLE_DEVICES", str(value), key)

    def use_cpu(self, key: str, value: Any) -> None:
        if value is True:
            self.take("cluster.env.CUDA_VISIBLE_DEVICES", "", key)

    def dynamo(self, key: str, value: Any) -> None:
        backend = value.get("dynamo_backend") if isinstance(value, dict) else value
        if backend in (None, "NO", "no"):
            return
        if str(backend).upper() != "INDUCTOR":
            self.refuse(key, f"torch.compile backend {backend!r}: launcher compiles with inductor (train.compile)",
                        "INDUCTOR, or NO")
            return
        self.take("train.compile", True, key)

    def environment(self, key: str, value: Any) -> None:
        if value != "LOCAL_MACHINE":
            self.refuse(key, f"{value!r}: launcher starts jobs on local, hostfile and Slurm machines",
                        "LOCAL_MACHINE, with a hostfile or a Slurm allocation for many machines")
        else:
            self.ignore(key, IGNORED[key])

    def fp8(self, key: str, value: Any) -> None:
        if value:
            self.refuse(key, "fp8 (Transformer Engine, MS-AMP) is not supported", "remove it; use bf16")

    def parallelism(self, key: str, value: Any) -> None:
        sizes = {name: size for name, size in (value or {}).items() if isinstance(size, int) and size > 1
                 and name != "parallelism_config_dp_shard_size"}
        if sizes:
            self.refuse(key, f"{', '.join(sizes)} > 1: tensor, context and replicated data parallelism are not "
                             "supported", "data parallelism only (DDP, FSDP or ZeRO)")
        else:
            self.ignore(key, "data parallelism only: nothing to map")

    def mpi(self, key: str, value: Any) -> None:
        self.refuse(key, "MPI (mpirun) is not a launcher engine", "a hostfile: `launcher run --hostfile FILE` "
                                                                   "starts one torchrun per host over pdsh or ssh")


def _file_hint(error) -> str:
    """The reader's own hint; for a path not found, where relative paths start."""
    return f"{error.hint} (a relative path starts at the recipe file)" if error.message == "file not found" \
        else error.hint
