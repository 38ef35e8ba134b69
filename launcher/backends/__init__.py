"""Training engines behind one small protocol (see base.py)."""

from __future__ import annotations


def make_backend(recipe, math, dist_env, run_dir: str = ""):
    """The recipe's backend; run_dir: where a backend keeps what it writes beside the checkpoints
    (DeepSpeed: the config it was given, its own monitors' files)."""
    if recipe.backend.name == "deepspeed":
        from launcher.backends.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(recipe, math, dist_env, run_dir)
    from launcher.backends.accelerate_backend import AccelerateBackend

    return AccelerateBackend(recipe, math, dist_env)
