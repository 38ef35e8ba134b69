"""DeepSpeed ZeRO checkpoints on another number of ranks: a world-size-free form, and its loading.

A ZeRO-1/2/3 checkpoint holds, per rank, that rank's slice of the fp32 master weights and of the
optimizer's moments, flattened per parameter group (stages 1 and 2: a range of the group's flat
buffer per rank, whose place of each weight DeepSpeed records as param_slice_mappings; stage 3: a
1/N slice of every weight). `write_full_form` reads the N slices and writes every weight whole,
by name: the fp32 weight, each optimizer state (`exp_avg`, `exp_avg_sq`, SGD's `momentum_buffer`),
and what is not per weight (the step count, the group hyperparameters, DeepSpeed's own scheduler
and loss scaler).

The M ranks of the resuming job write it together: rank r joins the r-th of M runs of weights
(in the model's order, balanced by size), one state at a time, from memory-mapped shards, of
which only the pages of its weights are read. So the joining needs no GPU of the old layout, the
host memory of one node stays under the model's fp32 size plus a rank's share of the shards,
and its time falls with M.

`load_full_form` puts that form into an engine built for the new world size: each rank copies
its slice of every whole tensor into DeepSpeed's partitions, at the fragment addresses DeepSpeed
keeps for each weight, and the low-precision weights from the fp32 ones. The fp32 master weights
and the moments come back exactly, whatever N and M are.

DeepSpeed's universal checkpoint does the same in three manual steps (save, ds_to_universal.py,
load_universal); here it happens on resume, and the form is kept beside the checkpoint
(runtime/resume.py), so the next resume on another size reuses it.
"""

from __future__ import annotations

import glob
import os
import re

import torch

from launcher.backends.deepspeed_files import load_weights_only

# One file per kind and part: {name: fp32 tensor}. "model" holds the fp32 weights (part 0 also the
# module's buffers and frozen weights), "state-<key>" one optimizer state key's tensors.
PART = "{kind}-{part:05d}-of-{parts:05d}.pt"
REST = "rest.pt"  # {"step", "param_groups", "keys", "parts", "lr_scheduler", "loss_scaler", "world_size", "stage"}
# ZeRO's shards, and those of DeepSpeed's BF16_Optimizer (bf16 under ZeRO-0 or 1), cut like ZeRO-1's.
_SHARD = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


def shard_files(ds_dir: str) -> list[str]:
    """The ranks' ZeRO optimizer shards, in rank order (none: ZeRO-0, whose state is whole already)."""
    found = [(int(m.group(1)), path) for path in glob.glob(os.path.join(ds_dir, "*.pt"))
             if (m := _SHARD.match(os.path.basename(path)))]
    return [path for _, path in sorted(found)]


@torch.no_grad()  # the saved fp32 partitions require grad: copies of them would keep them mapped
def write_full_form(ds_dir: str, files, part: int = 0, parts: int = 1) -> None:
    """This part's weights whole, by name, from the shards in ds_dir, through `files` (the checkpoint
    writer, runtime.checkpoint.CheckpointFiles: the form gets its checksums); part 0 also writes
    what is not per weight."""
    shards = shard_files(ds_dir)
    if not shards:
        raise ValueError(f"{ds_dir}: no ZeRO optimizer shards to join")
    model_states = _load(os.path.join(ds_dir, _model_states_name(ds_dir)), mmap=True)
    shapes = [item for group in model_states["param_shapes"] for item in group.items()]
    first = _load(shards[0], mmap=True)["optimizer_state_dict"]
    stage = int(first.get("zero_stage", 1))  # BF16_Optimizer's shards name no stage: cut as ZeRO-1's
    if stage == 3 and model_states.get("frozen_param_shapes"):
        raise ValueError("frozen weights under ZeRO-3 are not resharded; resume on the same world size")
    base = _base_state(first, stage)
    keys = sorted({key for state in base["state"].values() for key, value in state.items()
                   if torch.is_tensor(value) and value.dim() == 1})
    mine = _part_of(shapes, part, parts)
    for key in (None, *keys):
        tensors = _whole(shards, shapes, stage, key, mine)
        if key is None and part == 0:
            extra = [*(model_states.get("buffer_names") or ()), *(model_states.get("frozen_param_shapes") or {})]
            tensors.update({name: model_states["module"][name].clone() for name in extra})
        files.save(tensors, PART.format(kind="model" if key is None else f"state-{key}", part=part, parts=parts))
        del tensors  # one state in memory at a time
    if part == 0:
        step = next(iter(base["state"].values())).get("step")
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in base["param_groups"]]
        files.save({"step": step, "param_groups": hyper, "keys": keys, "parts": parts,
                    "lr_scheduler": model_states.get("lr_scheduler"), "loss_scaler": first.get("loss_scaler"),
                    "world_size": len(shards), "stage": stage}, REST)


def _part_of(shapes: list, part: int, parts: int) -> set[str]:
    """The names of the part-th of `parts` runs of weights, in order, of about equal size."""
    total = sum(shape.numel() for _, shape in shapes)
    mine, start = set(), 0
    for name, shape in shapes:
        if start * parts // max(total, 1) == part:  # the run its first element falls in
            mine.add(name)
        start += shape.numel()
    return mine


def _model_states_name(ds_dir: str) -> str:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if os.path.exists(os.path.join(ds_dir, name)):
            return name
    raise ValueError(f"{ds_dir}: no model states file")


def _load(path: str, mmap: bool = False):
    """DeepSpeed's files through the loader that allows tensors and DeepSpeed's few classes only;
    mapped, a shard's pages are read as they are used, not all at once."""
    return load_weights_only(path, map_location="cpu", mmap=mmap)


def _base_state(optimizer_state: dict, stage: int) -> dict:
    return optimizer_state["base_optimizer_state"] if stage < 3 else optimizer_state["optimizer_state_dict"]


def _flat_groups(optimizer_state: dict, stage: int, key: str | None) -> list[torch.Tensor]:
    """One shard's flat buffers per group: the fp32 master (key None) or one optimizer state."""
    if key is None:
        return optimizer_state["single_partition_of_fp32_groups" if stage < 3 else "fp32_flat_groups"]
    state = _base_state(optimizer_state, stage)["state"]
    return [state[index][key] for index in sorted(state)]


def _whole(shards: list[str], shapes: list, stage: int, key: str | None, names: set[str]) -> dict[str, torch.Tensor]:
    """{name: whole tensor} of the fp32 weights (key None) or one optimizer state, for `names`. The
    whole tensors are allocated first; each shard is then mapped, copied from and let go in rank
    order, so one shard's pages at most are in memory beside them."""
    # One buffer, the tensors views into it: one allocation the allocator gives back whole when the
    # state is saved (many would leave the heap fragmented, and the next state would grow past it).
    mine = [(name, shape.numel()) for name, shape in shapes if name in names]
    buffer = torch.empty(sum(numel for _, numel in mine), dtype=torch.float32)
    out, at = {}, 0
    for name, numel in mine:
        out[name] = buffer.narrow(0, at, numel)
        at += numel
    filled = dict.fromkeys(out, 0)
    world = len(shards)
    for rank, path in enumerate(shards):  # each weight's slices come in the order of its elements
        optimizer_state = _load(path, mmap=True)["optimizer_state_dict"]
        flats = _flat_groups(optimizer_state, stage, key)
        if stage < 3:
            for index, mapping in enumerate(optimizer_state["param_slice_mappings"]):
                for name, address in mapping.items():
                    if name in out:
                        out[name].narrow(0, filled[name], address.numel).copy_(
                            flats[index].narrow(0, address.start, address.numel))
                        filled[name] += address.numel
        else:  # 1/world of every weight, in order across the sub-group buffers, the last slice padded
            offset = 0
            for name, shape in shapes:
                part = -(-shape.numel() // world)
                if name in out:
                    take = max(0, min(part, shape.numel() - rank * part))
                    _copy_span(flats, offset, out[name].narrow(0, rank * part, take))
                    filled[name] += take
                offset += part
        del optimizer_state, flats
    for name, shape in shapes:
        if name in out and filled[name] != shape.numel():
            raise ValueError(f"the shards hold {filled[name]} of {name}'s {shape.numel()} elements")
    return {name: out[name].view(shape) for name, shape in shapes if name in out}


def _copy_span(flats: list[torch.Tensor], offset: int, into: torch.Tensor) -> None:
    """into <- the elements at `offset` of the buffers taken as one, without joining them."""
    done = 0
    for flat in flats:
        if offset >= flat.numel():
            offset -= flat.numel()
            continue
        take = min(flat.numel() - offset, into.numel() - done)
        into.narrow(0, done, take).copy_(flat.narrow(0, offset, take))
        done, offset = done + take, 0
        if done == into.numel():
            return
    if done != into.numel():
        raise ValueError(f"the shard's buffers end {into.numel() - done} elements early")


@torch.no_grad()
def load_full_form(engine, directory: str) -> None:
    """This rank's slices of the whole tensors into the engine's partitions (any world size)."""
    rest = _load(os.path.join(directory, REST))
    weights = _load_parts(directory, "model", rest["parts"])
    states = {key: _load_parts(directory, f"state-{key}", rest["parts"]) for key in rest["keys"]}
    optimizer = engine.optimizer
    names = {param: name for name, param in engine.module.named_parameters()}
    if engine.zero_optimization_stage() == 3:
        _load_stage3(optimizer, names, weights, states, rest["step"])
    else:
        _load_stage12(optimizer, names, weights, states, rest["step"])
    for group, saved in zip(optimizer.optimizer.param_groups, rest["param_groups"], strict=True):
        group.update({k: v for k, v in saved.items() if k in group})
    if rest.get("lr_scheduler") is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(rest["lr_scheduler"])
    if rest.get("loss_scaler") is not None and hasattr(optimizer, "loss_scaler"):
        optimizer.loss_scaler = rest["loss_scaler"]
    for name, buffer in engine.module.named_buffers():
        if name in weights:
            buffer.data.copy_(weights[name])


def _load_parts(directory: str, kind: str, parts: int) -> dict[str, torch.Tensor]:
    """One kind's tensors from all its parts, mapped: a rank reads the pages of its slices only."""
    merged: dict[str, torch.Tensor] = {}
    for part in range(parts):
        merged.update(_load(os.path.join(directory, PART.format(kind=kind, part=part, parts=parts)), mmap=True))
    return merged


def _fresh_state(optimizer, flat: torch.Tensor, keys, step) -> dict:
    state = optimizer.optimizer.state.setdefault(flat, {})
    for key in keys:
        state[key] = torch.zeros_like(flat)
    state["step"] = step.clone() if torch.is_tensor(step) else step
    return state


def _load_stage12(optimizer, names: dict, weights: dict, states: dict, step) -> None:
    """Stages 1 and 2: every weight whole on every rank; this rank's range of each group's fp32
    master and moment buffers, at each weight's fragment address."""
    bf16 = not hasattr(optimizer, "bit16_groups")  # DeepSpeed's BF16_Optimizer names them otherwise
    groups = optimizer.bf16_groups if bf16 else optimizer.bit16_groups
    flats = optimizer.fp32_groups_flat_partition if bf16 else optimizer.single_partition_of_fp32_groups
    for index, group in enumerate(groups):
        flat = flats[index]
        state = _fresh_state(optimizer, flat, states, step)
        for param in group:
            whole = weights[names[param]]
            param.data.copy_(whole.to(param.dtype))
            mapping = param._hp_mapping
            if mapping is None:  # none of this weight lies in this rank's range
                continue
            source, target = mapping.lp_fragment_address, mapping.hp_fragment_address
            mapping.hp_fragment.data.copy_(whole.flatten().narrow(0, source.start, source.numel))
            for key, tensors in states.items():
                state[key].narrow(0, target.start, target.numel).copy_(
                    tensors[names[param]].flatten().narrow(0, source.start, source.numel))
    for name, param in ((names[p], p) for p in names if not p.requires_grad and names[p] in weights):
        param.data.copy_(weights[name].to(param.dtype))  # frozen weights: whole on every rank


def _load_stage3(optimizer, names: dict, weights: dict, states: dict, step) -> None:
    """Stage 3: this rank's 1/M slice of every weight into its partition (the low-precision one as
    well) and into the fp32 master and moment buffers of its sub-group."""
    for index, group in enumerate(optimizer.fp16_groups):
        flat = optimizer.fp32_partitioned_groups_flat[index]
        state = _fresh_state(optimizer, flat, states, step)
        for param in group:
            _, offset, numel = optimizer.grad_position[optimizer.get_param_id(param)]
            rank = optimizer._get_param_partition_rank(param)
            part = _slice(weights[names[param]], rank, numel)
            flat.narrow(0, offset, numel).copy_(part)
            param.ds_tensor.data.copy_(part.to(param.ds_tensor.dtype).view_as(param.ds_tensor))
            for key, tensors in states.items():
                state[key].narrow(0, offset, numel).copy_(_slice(tensors[names[param]], rank, numel))


def _slice(whole: torch.Tensor, rank: int, part: int) -> torch.Tensor:
    """The rank's `part` elements of the flattened tensor, zeros past its end (ZeRO-3's padding)."""
    flat = whole.flatten().to(torch.float32)
    out = torch.zeros(part, dtype=torch.float32)
    start = rank * part
    available = max(0, min(part, flat.numel() - start))
    if available:
        out[:available] = flat[start:start + available]
    return out
