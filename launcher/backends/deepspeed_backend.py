"""DeepSpeed: ZeRO 0-3, CPU offload, bf16/fp16, with a config generated from the recipe.

The trainer normalises the loss by the global target count, so we call backward with
scale_wrt_gas=False (DeepSpeed would otherwise divide by the accumulation steps a second time).
DeepSpeed counts micro-steps itself: engine.step() runs after every backward and only updates at
the accumulation boundary.
"""

from __future__ import annotations

import contextlib
import enum
import os
import pickle
import sys

import torch

from launcher.backends.optim import build_optimizer, set_lr
from launcher.backends.precision import resolve_precision
from launcher.quiet import without_build_banner


def deepspeed_config(recipe, math, precision: str, torch_autocast: bool = False) -> dict:
    """The DeepSpeed config for the recipe. With torch_autocast, bf16/fp16 run as torch autocast
    (fp32 weights and buffers, low-precision matmuls and convolutions) instead of DeepSpeed casting
    the weights (see needs_torch_autocast)."""
    backend = recipe.backend
    zero: dict = {"stage": backend.zero_stage}
    if backend.zero_stage >= 1:
        zero.update({"overlap_comm": torch.cuda.is_available(), "contiguous_gradients": True,
                     "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8})
    if backend.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if backend.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
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
    return _merge(config, backend.deepspeed_config)


def needs_torch_autocast(model) -> bool:
    """True for a model with BatchNorm (ResNet). DeepSpeed's bf16/fp16 mode casts the parameters but
    keeps the buffers in fp32, so BatchNorm would get bf16 weights next to fp32 running statistics
    and fp32 images, and the first forward fails on the dtypes. Torch autocast, as under Accelerate
    and in the plain loop, keeps all of them in fp32 and runs the convolutions in bf16."""
    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())


def deepspeed_checkpoint_classes() -> list[type]:
    """What DeepSpeed pickles into its checkpoints besides tensors and containers: its loss scalers,
    the ZeRO stage enum and the fragment addresses of its parameter-slice maps."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_weights_only(path: str, map_location=None):
    """torch.load restricted to tensors, containers and deepspeed_checkpoint_classes()."""
    classes = deepspeed_checkpoint_classes()
    # Python 3.11.0-3.11.3 (Debian 12's 3.11.2) pickle an enum member as getattr(EnumClass, "NAME"),
    # which weights_only refuses. The unpickler's getattr here only looks up a member of the enums
    # allowed above; any other getattr in a file still fails the load.
    enums = tuple(c for c in classes if isinstance(c, type) and issubclass(c, enum.Enum))

    def enum_member(owner, name: str):
        if owner not in enums or name not in owner.__members__:
            raise pickle.UnpicklingError(f"getattr({owner!r}, {name!r}) is not an enum member allowed in a checkpoint")
        return owner[name]

    with torch.serialization.safe_globals([*classes, (enum_member, "builtins.getattr")]):
        return torch.load(path, map_location=map_location, weights_only=True)


def fused_optimizer_fits(device, offload_optimizer: bool) -> bool:
    """torch's fused AdamW/SGD: one kernel over every parameter where the optimizer's fp32
    partitions live. On the GPU, as the plain loop uses it; and on the CPU under ZeRO-Offload, where
    torch's default (foreach) AdamW took 142 ms per 50M parameters on 2 threads against 24 ms fused,
    as fast as DeepSpeed's own CPU Adam (24 ms), which would need a one-time C++ build
    (`python bench/run.py --cpu`, section optimizer). Our groups (per-group LR, weight decay) are
    kept as they are. Plain CPU training keeps torch's default."""
    return offload_optimizer or device.type == "cuda"


def passthrough_problems(config: dict) -> list[str]:
    """Validate the merged config with DeepSpeed's own (pydantic) schema; [] when it is valid.

    DeepSpeed forbids unknown keys inside its sections (zero_optimization, ...) but ignores unknown
    top-level keys, so a typo there stays unnoticed by both of us. Outside a process group it
    checks the batch keys for one process, so they are given to it as one process's (the plan
    checks them for the real world size).
    """
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


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _announce_op_build() -> None:
    """On CPU, DeepSpeed's first run on a machine JIT-compiles its shared-memory collective op
    (about a minute, silently): say so, and where it is kept."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private; a torch without it says nothing

        directory = _get_build_directory("deepspeed_shm_comm", verbose=False)
    except (ImportError, OSError, RuntimeError):
        return
    if not os.path.exists(os.path.join(directory, "deepspeed_shm_comm.so")):
        print(f"launcher: building DeepSpeed's shm_comm CPU op once (about a minute; needs g++ and ninja); "
              f"cached in {directory} (TORCH_EXTENSIONS_DIR)", file=sys.stderr, flush=True)


class DeepSpeedBackend:
    name = "deepspeed"

    def __init__(self, recipe, math, dist_env) -> None:
        import deepspeed

        self.recipe, self.math = recipe, math
        self.precision = resolve_precision(recipe.precision)
        cuda = torch.cuda.is_available()
        if not cuda and dist_env.rank == 0:
            _announce_op_build()
        with without_build_banner():
            deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(dist_env.local_rank)
        self.device = torch.device("cuda", dist_env.local_rank) if cuda else torch.device("cpu")
        self.engine = None
        self.model = None
        self.last_step_skipped = False  # train.on_nonfinite=skip is refused for DeepSpeed (schema)

    def prepare(self, model, groups) -> None:
        import deepspeed

        optimizer = build_optimizer(groups, self.recipe.optimizer,
                                    fused=fused_optimizer_fits(self.device, self.recipe.backend.offload_optimizer))
        torch_autocast = self.precision != "fp32" and needs_torch_autocast(model)
        config = deepspeed_config(self.recipe, self.math, self.precision, torch_autocast)
        problems = passthrough_problems(config)
        if problems:
            raise ValueError(f"backend.deepspeed_config is not valid for DeepSpeed: {problems[0]}")
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        # DeepSpeed unpickles its files with weights_only=False: a forged checkpoint would run code.
        # Its engine reads every checkpoint file through this one loader, so ours replaces it.
        self.engine.checkpoint_engine.load = load_weights_only
        if self.recipe.train.compile:
            self.engine.compile()
        self.model = self.engine

    def autocast(self):
        return contextlib.nullcontext()  # DeepSpeed casts the model, or autocasts in its own forward

    def backward(self, loss, last: bool) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        if not last:
            self.engine.step()  # advances the micro-step counter; no update before the boundary

    def step(self, lr: float, step: int = 0):
        set_lr(self.engine.optimizer, lr, step)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        # None: DeepSpeed did not compute one (ZeRO-0 in fp32 steps a plain torch optimizer).
        return torch.as_tensor(norm) if norm is not None else None

    def unwrapped(self):
        return self.engine.module

    def save(self, directory: str) -> None:
        self.engine.save_checkpoint(directory, tag="deepspeed", save_latest=False)

    def load(self, directory: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag="deepspeed", load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {directory}")

    def export_state_dict(self):
        if self.recipe.backend.zero_stage == 3:
            # Gathers the partitioned parameters; every rank must call it.
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        return state if torch.distributed.get_rank() == 0 else None
