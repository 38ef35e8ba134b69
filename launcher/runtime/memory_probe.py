"""What one rank's model holds and one training step allocates, traced on the meta device.

Run as `python -m launcher.runtime.memory_probe` by the plan (launcher/plan/memory.py), which
imports no torch: stdin is {"path", "overrides", "micro": [sizes]}, stdout's last line is the
figures as JSON. The recipe module's memory_probe(recipe) makes the model and micro-batches on
the meta device (shapes and dtypes, no storage, no weights read, no data), and one forward and
backward per micro-batch size runs through launcher.runtime.live_bytes, which counts every
allocation as the real step would make it. What is measured here, per rank and unsharded:

- parameters, trainable parameters and buffers, in the dtype the engine keeps them;
- activations: the peak that the forward and backward add beside the parameters and the
  gradients written so far (so a gradient is not counted twice), and the peak of activations and
  gradients together (for engines that keep every gradient whole), at each micro-batch size;
- the bytes of one micro-batch as the loader hands it over;
- the largest trainable tensor (an optimizer's per-tensor temporaries) and the largest block of
  parameters (FSDP gathers one block at a time);
- the sizes the model itself cannot train at, with its error, when another size traces (a model
  with BatchNorm refuses one sample: the real step would fail the same way);
- this process's own anonymous memory after all that (the interpreter, torch and the recipe's
  libraries: what a rank's process holds beside its tensors).

How the engines shard, copy and buffer these is arithmetic, in launcher/plan/memory.py.
"""

from __future__ import annotations

import json
import sys
import time


def probe(path: str, overrides: list[str], micros: list[int], checkpointed_too: bool = False) -> dict:
    import torch

    from launcher.backends.precision import resolve_precision
    from launcher.config.load import load_recipe

    started = time.perf_counter()
    loaded = load_recipe(path, overrides)
    recipe, module = loaded.recipe, loaded.recipe_module
    make = getattr(module, "memory_probe", None)
    if make is None:
        return {"unsupported": f"recipe module {recipe.recipe} defines no memory_probe(recipe)"}
    precision = resolve_precision(recipe.precision)
    # DeepSpeed casts the weights for bf16/fp16 (one dtype for the whole step); Accelerate keeps
    # fp32 weights under autocast, whose activations the low-precision trace approximates.
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    out: dict = {"precision": precision, "activations": {}, "activations_checkpointed": {},
                 "with_gradients": {}, "with_gradients_checkpointed": {}, "batch_bytes": {}}
    variants = [("", recipe.train.activation_checkpointing)]
    if checkpointed_too and not recipe.train.activation_checkpointing:
        variants.append(("_checkpointed", True))
    for key, checkpointed in variants:
        with torch.device("meta"):
            made = make(recipe)
            model = made.model.to(low) if low is not None else made.model
        if checkpointed:
            enable = getattr(model, "gradient_checkpointing_enable", None)
            if enable is None:
                continue  # the model cannot checkpoint (the trainer refuses the setting too)
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        if not out.get("param_bytes"):
            out.update(_parameter_figures(model))
        for micro in micros:  # one model for every size: the gradients are dropped between traces
            with torch.device("meta"):
                batch = made.batch(micro)
            try:
                beside, joint = _activation_peak(model, batch, made.loss)
            except Exception as error:  # a size the model itself refuses (BatchNorm on one sample)
                model.zero_grad(set_to_none=True)
                out.setdefault("cannot_train", {})[str(micro)] = f"{type(error).__name__}: {error}"[:500]
                continue
            model.zero_grad(set_to_none=True)
            out["activations" + key][str(micro)], out["with_gradients" + key][str(micro)] = beside, joint
            out["batch_bytes"][str(micro)] = sum(t.numel() * t.element_size() for t in _tensors(batch))
    if not out["activations"]:  # no size traced: the trace itself fails, not one size
        raise RuntimeError(next(iter(out.get("cannot_train", {}).values()), "nothing traced"))
    out["seconds"] = round(time.perf_counter() - started, 3)
    out["process_private_bytes"] = _private_bytes()
    return out


def _private_bytes() -> int:
    """This process's anonymous resident memory: the interpreter, torch and the recipe module's
    libraries as a rank holds them, without tensors (everything here was on the meta device)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _parameter_figures(model) -> dict:
    trainable = [p for p in model.parameters() if p.requires_grad]
    blocks = [sum(p.numel() * p.element_size() for p in child.parameters())
              for module in model.modules() if isinstance(module, _containers())
              for child in module.children()]
    return {
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
        "largest_trainable": max((p.numel() for p in trainable), default=0),
        "trainable_sizes": [p.numel() for p in trainable],  # in order: how ZeRO's flat partitions cut them
        "largest_block_bytes": max(blocks, default=0),
    }


def _containers():
    from torch import nn

    return nn.ModuleList, nn.Sequential


def _tensors(value):
    import torch
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _activation_peak(model, batch, loss) -> tuple[int, int]:
    """(the peak the step adds beside the gradients written so far, the peak of activations and
    gradients together), over the parameters and buffers."""
    from launcher.runtime.live_bytes import LiveBytes

    counter = LiveBytes()
    for tensor in (*model.parameters(), *model.buffers()):
        counter.hold(tensor)
    hooks = counter.watch_grads(model.parameters())
    held = counter.live
    with counter:
        loss_sum, _ = loss(model, batch)
        loss_sum.backward()
    for hook in hooks:
        hook.remove()
    return max(0, counter.peak_beside_grads - held), max(0, counter.peak - held)


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        figures = probe(request["path"], request["overrides"], request["micro"], request.get("checkpointed_too", False))
    except Exception as error:  # the plan reports it and goes on without an estimate
        figures = {"failed": f"{type(error).__name__}: {error}"[:2000]}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
