"""The meta-device trace in its own process (launcher/runtime/memory_probe.py), on the MLP recipe,
whose sizes are written out by hand here."""

from __future__ import annotations

from launcher.config.catalog import resolve_recipe_file
from launcher.plan.memory import probe_model


def test_the_trace_counts_the_parameters_and_activations_that_grow_with_the_micro_batch():
    model = probe_model(resolve_recipe_file("mlp-tiny"), ("model.hidden=64", "model.layers=2", "data.features=16"),
                        [2, 4, 32], checkpointed=True)
    assert not isinstance(model, str), model
    params = (16 * 64 + 64) + (64 * 64 + 64) + (64 * 4 + 4)
    assert (model.params, model.trainable, model.param_bytes) == (params, params, params * 4)
    assert model.largest_trainable == 64 * 64 and model.trainable_sizes[0] == 16 * 64
    assert model.activations[2] < model.activations[4] < model.activations[32]
    assert model.with_gradients[32] >= model.activations[32]
    # ids (int64), x (16 floats) and y (4 floats) per sample
    assert model.batch_bytes == {m: m * (8 + 16 * 4 + 4 * 4) for m in (2, 4, 32)}
    assert model.activations_checkpointed == {}  # an nn.Sequential cannot checkpoint


def test_a_recipe_module_without_a_probe_says_so(tmp_path):
    module = tmp_path / "bare.py"
    module.write_text("from dataclasses import dataclass\nDESCRIPTION = 'x'\n@dataclass(frozen=True)\n"
                      "class ModelConfig:\n    pass\n@dataclass(frozen=True)\nclass DataConfig:\n    pass\n"
                      "def build(recipe, ctx):\n    raise NotImplementedError\n")
    recipe = tmp_path / "bare.yaml"
    recipe.write_text(f"recipe: {module}\n")
    answer = probe_model(str(recipe), (), [2], checkpointed=False)
    assert isinstance(answer, str) and "defines no memory_probe" in answer
