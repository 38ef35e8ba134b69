"""Training engines behind one small protocol (see base.py)."""

from __future__ import annotations


def make_backend(recipe, math, dist_env):
    if recipe.backend.name == "deepspeed":
        from launcher.backends.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(recipe, math, dist_env)
    from launcher.backends.accelerate_backend import AccelerateBackend

    return AccelerateBackend(recipe, math, dist_env)
