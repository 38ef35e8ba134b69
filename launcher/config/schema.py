"""The typed recipe schema: one frozen dataclass per section.

Recipe modules add their own `ModelConfig` and `DataConfig`; everything else is shared. A field
without a default is required. `check()` methods add cross-field rules; the generic validator in
validate.py does types, unknown keys and hints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from launcher.config.modules import TRACKERS, is_module_reference
from launcher.rundir.naming import name_problem

Auto = Literal["auto"]
MAX_SEED = 2**63 - 1  # torch takes 64 bits; the per-rank seeds derived from it wrap around (trainer)


def deepspeed_config_problems(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """What DeepSpeed would refuse only after the ranks started, found before: a ZeRO stage that
    does not exist. (YAML dates, which JSON cannot hold, are refused when the file is read.) Batch
    keys are checked against the plan's world size (plan/launch.py); the rest by DeepSpeed's own
    schema in `validate` and `run`."""
    zero = config.get("zero_optimization")
    stage = zero.get("stage") if isinstance(zero, dict) else None
    if stage is not None and (isinstance(stage, bool) or stage not in (0, 1, 2, 3)):
        return [("zero_optimization.stage", f"must be 0, 1, 2 or 3, got {stage!r}",
                 "set backend.zero_stage instead of the raw key")]
    return []


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    # Norm weights and biases are excluded from weight decay (the usual BERT/GPT practice).
    decay_norm_and_bias: bool = False
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.lr <= 0:
            out.append(("lr", f"must be > 0, got {self.lr}", "a typical AdamW lr is 1e-4 to 1e-3"))
        if self.weight_decay < 0:
            out.append(("weight_decay", "must be >= 0", "use 0.0 to disable weight decay"))
        if self.grad_clip < 0:
            out.append(("grad_clip", "must be >= 0", "use 0 to disable clipping"))
        if not all(0 <= b < 1 for b in self.betas):
            out.append(("betas", f"each beta must be in [0, 1), got {list(self.betas)}", "e.g. [0.9, 0.999]"))
        if self.eps <= 0:
            out.append(("eps", f"must be > 0, got {self.eps}", "AdamW's default is 1e-8"))
        if self.momentum < 0:
            out.append(("momentum", f"must be >= 0, got {self.momentum}", "SGD's usual momentum is 0.9"))
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            out.append(("nesterov", "Nesterov momentum needs momentum > 0", "set optimizer.momentum, e.g. 0.9"))
        return out


@dataclass(frozen=True)
class SchedulerConfig:
    """Linear warmup, then a decay over the remaining optimizer steps."""

    # deepspeed: the scheduler section of backend.deepspeed_config runs, as DeepSpeed's own
    name: Literal["constant", "linear", "cosine", "exponential", "step", "deepspeed"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # floor for linear/cosine, as a fraction of optimizer.lr
    gamma: float = 0.5  # exponential: lr *= gamma per decay_steps; step: lr *= gamma every step_size
    step_size: int = 100  # step decay: optimizer steps between drops
    decay_steps: int = 100  # exponential: optimizer steps per factor gamma

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.warmup_steps < 0:
            out.append(("warmup_steps", "must be >= 0", "use 0 for no warmup"))
        if not 0 <= self.min_lr_ratio <= 1:
            out.append(("min_lr_ratio", "must be in [0, 1]", "0.1 keeps a floor of lr/10"))
        if not 0 < self.gamma <= 1:
            out.append(("gamma", "must be in (0, 1]", "0.5 halves the lr"))
        if self.step_size <= 0:
            out.append(("step_size", "must be > 0", "optimizer steps between lr drops"))
        if self.decay_steps <= 0:
            out.append(("decay_steps", "must be > 0", "optimizer steps per factor gamma"))
        return out


@dataclass(frozen=True)
class BatchConfig:
    """The global batch is the recipe's meaning; accumulation is derived from the world size."""

    global_: int = field(default=32, metadata={"key": "global"})
    micro: int = 8  # samples per process per forward/backward

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.global_ <= 0:
            out.append(("global", f"must be > 0, got {self.global_}", "samples per optimizer step, over all processes"))
        if self.micro <= 0:
            out.append(("micro", f"must be > 0, got {self.micro}", "samples per process per forward pass"))
        return out


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100  # optimizer steps (of the global batch); the LR schedule spans these
    # Stop after this many steps in this invocation, with a checkpoint, keeping the schedule of
    # `steps` (time-boxed allocations; the next run resumes). 0: run to the end.
    stop_after_steps: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    eval_at_start: bool = False  # also evaluate the starting model (a baseline for fine-tuning)
    compile: bool = False
    activation_checkpointing: bool = False
    # Record this many steps of rank 0 with torch.profiler (after 3 warm-up steps) into
    # RUN_DIR/profile/: a trace and where the step time goes. 0: no profiler.
    profile_steps: int = 0
    # A NaN or inf loss or gradient norm: stop the run there without saving (the last checkpoint is
    # finite), or skip that update (Accelerate; one host sync per step) up to max_nonfinite_skips.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_nonfinite_skips: int = 10
    # A rank whose own data + forward time per step is this much above the median rank's, for
    # straggler_intervals log intervals in a row, is named on the console (0 intervals: never).
    straggler_slowdown: float = 0.3
    straggler_intervals: int = 3

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.max_nonfinite_skips < 0:
            out.append(("max_nonfinite_skips", "must be >= 0", "skipped updates allowed before the run stops"))
        if not self.straggler_slowdown > 0:
            out.append(("straggler_slowdown", f"must be > 0, got {self.straggler_slowdown}",
                        "0.3: 30% slower than the median rank"))
        if self.straggler_intervals < 0:
            out.append(("straggler_intervals", "must be >= 0", "log intervals in a row; 0 turns the check off"))
        if self.profile_steps < 0:
            out.append(("profile_steps", f"must be >= 0, got {self.profile_steps}",
                        "0 turns the profiler off; 5-10 steps make a readable trace"))
        if self.steps <= 0:
            out.append(("steps", f"must be > 0, got {self.steps}", "number of optimizer steps"))
        if self.log_every <= 0:
            out.append(("log_every", "must be > 0", "log every N optimizer steps"))
        if self.eval_every < 0:
            out.append(("eval_every", "must be >= 0", "0 evaluates only at the end"))
        if self.stop_after_steps < 0:
            out.append(("stop_after_steps", "must be >= 0", "0 runs to train.steps"))
        return out


@dataclass(frozen=True)
class BackendConfig:
    """Switch engines by changing `name`; options of the other engine are ignored."""

    name: Literal["accelerate", "deepspeed"] = "accelerate"
    strategy: Literal["ddp", "fsdp"] = "ddp"  # accelerate only
    zero_stage: Literal[0, 1, 2, 3] = 2  # deepspeed only
    offload_optimizer: bool = False  # deepspeed only
    offload_params: bool = False  # deepspeed only (needs zero_stage 3)
    # DeepSpeed's own config: a JSON file (relative to the recipe) or a mapping; what the recipe has
    # keys for is taken into them (config/deepspeed_import.py), the rest goes to DeepSpeed as written.
    deepspeed_config: Union[dict[str, Any], str] = field(default_factory=dict)
    # An accelerate config file (`accelerate config`'s output, relative to the recipe): its keys become
    # the recipe's (config/accelerate_import.py); emptied once they are.
    accelerate_config: str = ""

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.offload_params and self.zero_stage != 3:
            out.append(("offload_params", "parameter offload needs zero_stage: 3",
                        "set backend.zero_stage=3 or backend.offload_params=false"))
        if isinstance(self.deepspeed_config, dict):
            out += [(f"deepspeed_config.{key}", message, hint) for key, message, hint in
                    deepspeed_config_problems(self.deepspeed_config)]
        return out


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0  # 0: only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto | never | PATH to a checkpoint directory
    dir: str = ""  # default: <run dir>/checkpoints

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.every_steps < 0:
            out.append(("every_steps", "must be >= 0", "0 saves only at the end"))
        if self.keep_last < 1:
            out.append(("keep_last", "must be >= 1", "keep at least the newest checkpoint"))
        return out


ALERT_KINDS = ("failure", "preemption", "nonfinite", "straggler", "completion")  # tracking/alerts.py


@dataclass(frozen=True)
class TrackingConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "disabled"
    project: str = "launcher"
    entity: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    init_timeout: float = 30.0  # seconds to reach the server before falling back to offline
    log_model: bool = False  # upload the exported model as an artifact at the end
    # Where rank 0 logs: W&B (when `mode` is not disabled) and/or TensorBoard event files in
    # <run_dir>/tensorboard (always, when listed; for clusters without a way to W&B), or a tracker
    # module of the user's own (config/modules.py: TRACKERS, tracking/base.py).
    backends: list[str] = field(default_factory=lambda: ["wandb"])
    # Pushed to the trackers (W&B's own alerts) and metrics.jsonl: launcher/tracking/alerts.py.
    alerts: list[str] = field(default_factory=lambda: list(ALERT_KINDS))
    alert_interval_s: float = 600.0  # one alert of a kind per this many seconds at most
    # W&B system metrics (CPU, memory, GPU) of rank 0's machine only, or of every node, each
    # labelled in the one run (launcher/tracking/nodes.py).
    system_metrics: Literal["rank0", "all_nodes"] = "rank0"

    @property
    def uses_wandb(self) -> bool:
        """W&B is among the backends and `mode` does not disable it."""
        return "wandb" in self.backends and self.mode != "disabled"

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.init_timeout <= 0:
            out.append(("init_timeout", "must be > 0", "seconds, e.g. 30"))
        for name in self.alerts:
            if name not in ALERT_KINDS:
                out.append(("alerts", f"unknown alert `{name}`", f"use any of {', '.join(ALERT_KINDS)}, or []"))
        if self.alert_interval_s < 0:
            out.append(("alert_interval_s", "must be >= 0", "seconds between two alerts of a kind, e.g. 600"))
        for name in self.backends:
            if name not in TRACKERS and not is_module_reference(name):
                out.append(("backends", f"unknown tracker `{name}`",
                            f"use any of {', '.join(TRACKERS)}, or a tracker module of your own (pkg.module or "
                            "file.py: launcher/tracking/base.py)"))
        if len(set(self.backends)) != len(self.backends):
            out.append(("backends", "lists a tracker twice", "list each once"))
        return out


_HOST_ADDRESS = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,252})|\[?[0-9A-Fa-f:.]+\]?")  # a name, IPv4 or IPv6
_INTERFACES = re.compile(r"[\^=]?[A-Za-z0-9_.:\-]+(?:,[A-Za-z0-9_.:\-]+)*")


@dataclass(frozen=True)
class ClusterConfig:
    nodes: int = 1
    nproc_per_node: Union[int, Auto] = 1  # "auto": one process per visible GPU (1 on CPU)
    master_port: int = 29500
    hostfile: str = ""
    env: dict[str, str] = field(default_factory=dict)  # set and forwarded to every rank
    max_restarts: int = 0
    rdzv_timeout: int = 900  # seconds a node may take to join
    # Hostfile clusters: pdsh when installed (one connection fan-out), else one ssh per host.
    remote_shell: Literal["auto", "pdsh", "ssh"] = "auto"
    forward_env: list[str] = field(default_factory=list)  # extra variable names sent to other nodes
    # Seconds a collective may block before the job aborts (a stuck rank is then named).
    collective_timeout: int = 1800
    # Slurm: how many times a job that hit its time limit is requeued (preemptions always requeue).
    timeout_requeues: int = 3
    # How torchrun starts the ranks. spawn: a fresh interpreter each, which imports torch again.
    # fork: forked from torchrun's agent, which has torch and torch._dynamo imported already
    # (seconds less to the first step; torch's --run-path --start-method=fork). auto: fork on one
    # node of this machine without a GPU, spawn elsewhere (not yet measured on GPU hosts).
    start_method: Literal["auto", "spawn", "fork"] = "auto"
    # The rendezvous host the nodes dial: by default the first node's name as the hostfile or Slurm
    # gives it. Set it where names resolve to the wrong network (an IP or the name on the fast one).
    master_addr: str = ""
    # The network interface(s) NCCL and gloo use (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME), e.g. `ib0`
    # or `eth0,eth1`; NCCL's exclusions (`^docker0,lo`) go to NCCL only, gloo has no such syntax.
    network_interface: str = ""
    # The hang watch (engines/hang_watch.py): a rank whose step has not moved for longer than the
    # deadline is dumped and named, and the job ended. The deadline, learned from the run after
    # hang_warmup_steps: hang_factor x the slowest recent step, at least hang_floor_s; an
    # evaluation or save gets hang_factor x its own longest earlier duration, or hang_phase_s the
    # first time. The collective timeout stays the last line of defence.
    hang_watch: bool = True
    hang_floor_s: float = 60.0
    hang_factor: float = 10.0
    hang_phase_s: float = 600.0
    hang_warmup_steps: int = 3

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        if self.hang_floor_s <= 0 or self.hang_phase_s <= 0:
            out.append(("hang_floor_s" if self.hang_floor_s <= 0 else "hang_phase_s", "must be > 0 seconds",
                        "e.g. 60 (turn the watch off with hang_watch: false)"))
        if self.hang_factor < 1:
            out.append(("hang_factor", "must be >= 1", "e.g. 10: ten times the slowest recent step"))
        if self.hang_warmup_steps < 1:
            out.append(("hang_warmup_steps", "must be >= 1", "e.g. 3: compilation and the first steps"))
        if self.master_addr and not _HOST_ADDRESS.fullmatch(self.master_addr):
            out.append(("master_addr", f"`{self.master_addr}` is not a host name or IP address",
                        "e.g. node001-ib or 10.1.0.11"))
        if self.network_interface and not _INTERFACES.fullmatch(self.network_interface):
            out.append(("network_interface", f"`{self.network_interface}` is not a list of interface names",
                        "e.g. ib0, eth0,eth1 or ^docker0,lo"))
        if self.nodes <= 0:
            out.append(("nodes", f"must be > 0, got {self.nodes}", "number of machines"))
        if isinstance(self.nproc_per_node, int) and self.nproc_per_node <= 0:
            out.append(("nproc_per_node", f"must be > 0, got {self.nproc_per_node}",
                        "processes per node, usually one per GPU; or `auto`"))
        if not 1024 <= self.master_port <= 65535:
            out.append(("master_port", f"must be in 1024..65535, got {self.master_port}", "e.g. 29500"))
        if self.max_restarts < 0:
            out.append(("max_restarts", "must be >= 0", "0 fails the job on the first crash"))
        if self.collective_timeout <= 0:
            out.append(("collective_timeout", "must be > 0 seconds", "e.g. 1800; a stuck rank aborts after it"))
        if self.timeout_requeues < 0:
            out.append(("timeout_requeues", "must be >= 0", "0 never requeues a job that hit its time limit"))
        for name in self.forward_env:
            if not name.replace("_", "a").isalnum() or name[0].isdigit():
                out.append(("forward_env", f"`{name}` is not a valid environment variable name",
                            "list names like MY_VAR"))
        for key in self.env:
            if not key.replace("_", "a").isalnum() or key[0].isdigit():
                out.append((f"env.{key}", "is not a valid environment variable name",
                            "use letters, digits and underscores"))
        return out


@dataclass(frozen=True)
class Recipe:
    recipe: str  # built-in module name, dotted module path, or a .py file path
    model: Any  # the recipe module's ModelConfig
    data: Any  # the recipe module's DataConfig
    name: str = ""
    description: str = ""
    seed: int = 0
    output_dir: str = "runs"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    batch: BatchConfig = BatchConfig()
    train: TrainConfig = TrainConfig()
    backend: BackendConfig = BackendConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()
    cluster: ClusterConfig = ClusterConfig()

    def check(self) -> list[tuple[str, str, str]]:
        out = []
        problem = name_problem(self.name)
        if problem:
            out.append(("name", problem, "the run directory is <output_dir>/<name>, e.g. `name: bert-base-lr3e-4`"))
        if not 0 <= self.seed <= MAX_SEED:
            out.append(("seed", f"must be in 0..2**63-1, got {self.seed}", "any whole number like 0 or 1234"))
        if self.train.on_nonfinite == "skip" and self.backend.name == "deepspeed":
            out.append(("train.on_nonfinite", "`skip` needs backend.name=accelerate: DeepSpeed applies the update "
                        "inside engine.step(), before the norm can be checked",
                        "use `stop` (the default); fp16 runs skip overflowing steps by DeepSpeed's loss scaling"))
        if self.scheduler.name == "deepspeed" and (self.backend.name != "deepspeed" or not isinstance(
                self.backend.deepspeed_config, dict) or "scheduler" not in self.backend.deepspeed_config):
            out.append(("scheduler.name", "`deepspeed` runs the scheduler section of backend.deepspeed_config, and "
                        "there is none", "add one to the DeepSpeed config, or choose one of the recipe's schedules"))
        if self.scheduler.warmup_steps >= self.train.steps and self.train.steps > 0:
            out.append(("scheduler.warmup_steps",
                        f"warmup ({self.scheduler.warmup_steps}) must be shorter than train.steps ({self.train.steps})",
                        "lower the warmup or raise train.steps"))
        return out
