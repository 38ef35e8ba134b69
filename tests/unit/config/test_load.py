"""Recipe loading: types, YAML 1.1 surprises, hints, all problems at once."""

import pytest

from launcher.config.errors import RecipeError
from launcher.config.load import load_recipe, recipe_to_dict
from tests.helpers import TINY_RECIPE as BASE
from tests.helpers import write_recipe


def test_yaml_11_float_strings_become_floats(tmp_path):
    loaded = load_recipe(write_recipe(tmp_path / "recipe.yaml", BASE + "optimizer: {lr: 1e-4, eps: 1E-8}\n"))
    assert loaded.recipe.optimizer.lr == 1e-4
    assert isinstance(loaded.recipe.optimizer.lr, float)
    assert loaded.recipe.optimizer.eps == 1e-8


def test_defaults_and_global_key_spelling(tmp_path):
    loaded = load_recipe(write_recipe(tmp_path / "recipe.yaml", BASE))
    assert loaded.recipe.batch.global_ == 16
    assert recipe_to_dict(loaded.recipe)["batch"] == {"global": 16, "micro": 4}
    assert loaded.recipe.model.hidden == 8


def test_overrides_set_delete_and_type(tmp_path):
    loaded = load_recipe(write_recipe(tmp_path / "recipe.yaml", BASE + "seed: 3\n"),
                         ["optimizer.lr=3e-4", "batch.global=32", "~seed", "cluster.env.NCCL_DEBUG=INFO"])
    assert loaded.recipe.optimizer.lr == 3e-4
    assert loaded.recipe.batch.global_ == 32
    assert loaded.recipe.seed == 0
    assert loaded.recipe.cluster.env == {"NCCL_DEBUG": "INFO"}


def test_all_problems_reported_at_once(tmp_path):
    text = BASE.replace("hidden: 8", "hiden: 8") + "optimizer: {lrr: 1, weight_decay: -1}\nprecision: fp64\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path / "recipe.yaml", text), ["train.steps=zero"])
    paths = {p.path for p in info.value.problems}
    assert {"model.hiden", "optimizer.lrr", "optimizer.weight_decay", "precision", "train.steps"} <= paths
    message = str(info.value)
    assert "did you mean `hidden`?" in message
    assert "did you mean `lr`?" in message
    assert "recipe.yaml:2" in message  # model.hiden is on line 2
    assert "command line `train.steps=zero`" in message


def test_user_module_from_file(tmp_path):
    (tmp_path / "my_recipe.py").write_text(
        "from dataclasses import dataclass\n"
        "DESCRIPTION = 'mine'\n"
        "@dataclass(frozen=True)\nclass ModelConfig:\n    width: int = 3\n"
        "@dataclass(frozen=True)\nclass DataConfig:\n    path: str = ''\n"
        "def build(recipe, ctx):\n    raise NotImplementedError\n")
    loaded = load_recipe(write_recipe(tmp_path / "recipe.yaml",
                                      "recipe: ./my_recipe.py\nmodel: {width: 5}\ndata: {path: x}\n"))
    assert loaded.recipe.model.width == 5
    assert loaded.recipe.recipe == str(tmp_path / "my_recipe.py")


def test_deepspeed_passthrough_is_checked_by_deepspeed(tmp_path):
    from click.testing import CliRunner

    from launcher.cli import main

    good = write_recipe(tmp_path / "good.yaml", BASE + "backend: {name: deepspeed, deepspeed_config: "
                        "{zero_optimization: {reduce_bucket_size: 1000}}}\n")
    bad = write_recipe(tmp_path / "bad.yaml", BASE + "backend: {name: deepspeed, deepspeed_config: "
                       "{zero_optimization: {overlap_com: true}}}\n")
    assert CliRunner().invoke(main, ["validate", str(good)]).exit_code == 0
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "backend.deepspeed_config" in result.output and "overlap_com" in result.output


def test_weight_decay_excludes_biases_and_norms():
    import torch

    from launcher.backends.optim import param_groups

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1, decay_norm_and_bias=False)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3]), torch.Size([2, 4])]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    assert len(param_groups(model, 0.1, decay_norm_and_bias=True)) == 1
