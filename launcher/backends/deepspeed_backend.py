"""DeepSpeed: ZeRO 0-3, CPU offload, bf16/fp16, with the config the plan makes of the recipe
(launcher/plan/deepspeed.py).

The trainer normalises the loss by the global target count, so we call backward with
scale_wrt_gas=False (DeepSpeed would otherwise divide by the accumulation steps a second time).
DeepSpeed counts micro-steps itself: engine.step() runs after every backward and only updates at
the accumulation boundary.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch

from launcher.backends.deepspeed_files import load_weights_only
from launcher.backends.deepspeed_schema import passthrough_problems
from launcher.backends.optim import build_optimizer, set_lr
from launcher.backends.precision import resolve_precision
from launcher.config.deepspeed_import import MONITOR_DIR
from launcher.plan.deepspeed import deepspeed_config
from launcher.quiet import without_build_banner


def needs_torch_autocast(model) -> bool:
    """True for a model with BatchNorm (ResNet). DeepSpeed's bf16/fp16 mode casts the parameters but
    keeps the buffers in fp32, so BatchNorm would get bf16 weights next to fp32 running statistics
    and fp32 images, and the first forward fails on the dtypes. Torch autocast, as under Accelerate
    and in the plain loop, keeps all of them in fp32 and runs the convolutions in bf16."""
    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())


def fused_optimizer_fits(device, offload_optimizer: bool) -> bool:
    """torch's fused AdamW/SGD: one kernel over every parameter where the optimizer's fp32
    partitions live. On the GPU, as the plain loop uses it; and on the CPU under ZeRO-Offload, where
    torch's default (foreach) AdamW took 142 ms per 50M parameters on 2 threads against 24 ms fused,
    as fast as DeepSpeed's own CPU Adam (24 ms), which would need a one-time C++ build
    (`python bench/run.py --cpu`, section optimizer). Our groups (per-group LR, weight decay) are
    kept as they are. Plain CPU training keeps torch's default."""
    return offload_optimizer or device.type == "cuda"


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


_TAG = "deepspeed"  # the subdirectory of a step directory that DeepSpeed writes
RECOVERY_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")


class CheckpointEngineSeam:
    """DeepSpeed's checkpoint engine with our writer and loader in its place. DeepSpeed writes and
    reads every state file through its engine's save() and load(), so these are where a checkpoint
    gets its checksums (launcher.runtime.checkpoint.CheckpointFiles) and where a forged file is
    refused (DeepSpeed itself unpickles with weights_only=False: a forged checkpoint would run
    code). Everything else is DeepSpeed's own engine."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.files = None  # set by DeepSpeedBackend.save while DeepSpeed writes a checkpoint

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def save(self, state_dict, path: str) -> None:
        if self.files is None:
            raise RuntimeError(f"DeepSpeed wrote {path} outside a launcher checkpoint: it would have no checksum")
        self.files.save_at(state_dict, path,
                           _use_new_zipfile_serialization=getattr(self.inner, "zipfile_serialization", True))

    def load(self, path: str, map_location=None):
        return load_weights_only(path, map_location)


def _check_one_lr(groups: list[dict]) -> None:
    """DeepSpeed's schedulers set one LR for every parameter group; a recipe whose groups scale
    theirs (a backbone at 0.1x, layers unfrozen later) needs the recipe's own schedule."""
    scaled = [g for g in groups if g.get("lr_scale", 1.0) != 1.0 or g.get("unfreeze_step", 0)]
    if scaled:
        raise ValueError("scheduler.name=deepspeed: DeepSpeed's scheduler sets one LR for every parameter group, and "
                         "this recipe scales or delays the LR of some (lr_scale, unfreeze_step); remove the scheduler "
                         "section of the DeepSpeed config and set the recipe's scheduler")


class DeepSpeedBackend:
    name = "deepspeed"

    def __init__(self, recipe, math, dist_env, run_dir: str = "") -> None:
        import deepspeed

        self.recipe, self.math, self.run_dir, self.rank = recipe, math, run_dir, dist_env.rank
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
        self.input_dtype = None  # DeepSpeed casts the weights to bf16/fp16: float inputs must follow
        # scheduler.name=deepspeed: the DeepSpeed config's scheduler sets the LR (trainer: scheduled_lr)
        self.owns_schedule = recipe.scheduler.name == "deepspeed"

    def prepare(self, model, groups) -> None:
        import deepspeed

        if self.owns_schedule:
            _check_one_lr(groups)
        optimizer = build_optimizer(groups, self.recipe.optimizer,
                                    fused=fused_optimizer_fits(self.device, self.recipe.backend.offload_optimizer))
        torch_autocast = self.precision != "fp32" and needs_torch_autocast(model)
        if self.precision != "fp32" and not torch_autocast:
            self.input_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        config = self._config(torch_autocast)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.engine.checkpoint_engine = CheckpointEngineSeam(self.engine.checkpoint_engine)
        if self.recipe.train.compile:
            self.engine.compile()
        self.model = self.engine

    def _config(self, torch_autocast: bool) -> dict:
        """The config DeepSpeed is given, checked by its own schema, with its monitors' files in the
        run directory; rank 0 keeps it there as deepspeed_config.json."""
        import json

        config = deepspeed_config(self.recipe, self.math, self.precision, torch_autocast, torch.cuda.is_available())
        monitor = config.get("csv_monitor")
        if isinstance(monitor, dict) and monitor.get("enabled") and self.run_dir:
            relative = str(monitor.get("output_path") or "")
            config["csv_monitor"] = {**monitor, "output_path": os.path.join(self.run_dir, MONITOR_DIR, relative)}
        problems = passthrough_problems(config)
        if problems:
            raise ValueError("backend.deepspeed_config is not valid for DeepSpeed: "
                             + "; ".join(f"{key}: {message}" for key, message in problems))
        if self.rank == 0 and self.run_dir:
            with open(os.path.join(self.run_dir, "deepspeed_config.json"), "w", encoding="utf-8") as handle:
                json.dump(config, handle, indent=2)
        return config

    def autocast(self):
        return contextlib.nullcontext()  # DeepSpeed casts the model, or autocasts in its own forward

    def backward(self, loss, last: bool) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        if not last:
            self.engine.step()  # advances the micro-step counter; no update before the boundary

    def scheduled_lr(self) -> float | None:
        """The LR DeepSpeed's own scheduler set for the next update (None: the trainer's schedule)."""
        return float(self.engine.get_lr()[0]) if self.owns_schedule else None

    def step(self, lr: float, step: int = 0):
        if not self.owns_schedule:
            set_lr(self.engine.optimizer, lr, step)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        # None: DeepSpeed did not compute one (ZeRO-0 in fp32 steps a plain torch optimizer).
        return torch.as_tensor(norm) if norm is not None else None

    def unwrapped(self):
        return self.engine.module

    def save(self, files) -> None:
        seam = self.engine.checkpoint_engine
        seam.files = files
        try:
            self.engine.save_checkpoint(str(files.directory), tag=_TAG, save_latest=False)
        finally:
            seam.files = None
        for script in RECOVERY_SCRIPTS:  # copied beside its tag by DeepSpeed's rank 0, for its users' own tools
            if os.path.isfile(files.path(script)):
                files.adopt(script)

    def load(self, directory: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=_TAG, load_lr_scheduler_states=self.owns_schedule)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {directory}")

    def sharded_by_rank(self, directory: str) -> bool:
        """The checkpoint's optimizer state is cut per rank (ZeRO-1/2/3): another world size needs
        the whole form (write_full_form, load_full)."""
        from launcher.backends.deepspeed_reshard import shard_files

        return bool(shard_files(os.path.join(directory, _TAG)))

    def write_full_form(self, directory: str, files, part: int, parts: int) -> None:
        from launcher.backends.deepspeed_reshard import write_full_form

        write_full_form(os.path.join(directory, _TAG), files, part, parts)

    def load_full(self, directory: str) -> None:
        from launcher.backends.deepspeed_reshard import load_full_form

        load_full_form(self.engine, directory)

    def export_state_dict(self):
        if self.engine.zero_optimization_stage() == 3:  # what runs, whoever set it
            # Gathers the partitioned parameters; every rank must call it.
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        return state if torch.distributed.get_rank() == 0 else None
