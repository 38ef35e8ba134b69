"""The catalogue of malformed recipes and overrides: exit 2, the key named, nothing started."""

import subprocess

import pytest
from click.testing import CliRunner

from launcher.cli import main

GOOD = """\
recipe: mlp_regression
model: {hidden: 8}
data: {samples: 64}
batch: {global: 16, micro: 4}
train: {steps: 5}
cluster: {nproc_per_node: 2}
"""

# (name, recipe text, overrides, text that must appear in the error)
CATALOGUE = [
    ("unknown key", GOOD + "optimizer: {lrr: 0.1}\n", [], "optimizer.lrr"),
    ("unknown section", GOOD + "optimiser: {lr: 0.1}\n", [], "did you mean `optimizer`?"),
    ("wrong type", GOOD.replace("micro: 4", "micro: four"), [], "batch.micro"),
    ("negative batch", GOOD.replace("global: 16", "global: -16"), [], "batch.global"),
    ("non-divisible batch", GOOD.replace("global: 16", "global: 12"), [], "batch.global"),
    ("missing module", GOOD.replace("mlp_regression", "no_such_recipe"), [], "recipe"),
    ("missing module file", GOOD.replace("mlp_regression", "./nope.py"), [], "recipe"),
    ("missing recipe key", GOOD.replace("recipe: mlp_regression\n", ""), [], "`recipe`: is required"),
    ("python tag", GOOD + "seed: !!python/object/apply:os.system ['touch SENTINEL']\n", [], "seed"),
    ("duplicate key", GOOD + "seed: 1\nseed: 2\n", [], "duplicate key"),
    ("yes/no as string", GOOD + "tracking: {project: no}\n", [], "tracking.project"),
    ("sexagesimal", GOOD + "tracking: {notes: 12:30}\n", [], "base-60"),
    ("bad choice", GOOD + "backend: {name: deepspped}\n", [], "did you mean `deepspeed`?"),
    ("warmup too long", GOOD + "scheduler: {warmup_steps: 10}\n", [], "scheduler.warmup_steps"),
    ("offload without zero-3", GOOD + "backend: {name: deepspeed, zero_stage: 2, offload_params: true}\n",
     [], "backend.offload_params"),
    ("betas length", GOOD + "optimizer: {betas: [0.9]}\n", [], "optimizer.betas"),
    ("model key", GOOD.replace("hidden: 8", "hiden: 8"), [], "did you mean `hidden`?"),
    ("bad env name", GOOD.replace("{nproc_per_node: 2}", "{env: {'1BAD': x}}"), [], "cluster.env.1BAD"),
    ("not YAML", GOOD + "seed: [1, 2\n", [], "not valid YAML"),
    ("not a mapping", "- a\n- b\n", [], "must be a mapping"),
    ("lr zero", GOOD + "optimizer: {lr: 0}\n", [], "optimizer.lr"),
    ("override unknown key", GOOD, ["optimizer.lrr=3e-4"], "optimizer.lrr"),
    ("override wrong type", GOOD, ["train.steps=many"], "train.steps"),
    ("override delete missing", GOOD, ["~seed"], "nothing to delete"),
    ("override without =", GOOD, ["optimizer.lr"], "key=value"),
    ("override into scalar", GOOD, ["seed.x=1"], "seed"),
    ("override non-divisible", GOOD, ["batch.global=20"], "batch.global"),
]


@pytest.fixture
def no_processes(monkeypatch):
    """The single seam: any attempt to start a process fails the test."""
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    return started


@pytest.mark.parametrize("name,text,overrides,expected", CATALOGUE, ids=[c[0] for c in CATALOGUE])
@pytest.mark.parametrize("command", ["run", "plan", "validate"])
def test_bad_input_exits_2_and_starts_nothing(tmp_path, no_processes, monkeypatch, command, name, text,
                                              overrides, expected):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text, encoding="utf-8")
    if command == "validate" and overrides:
        return  # validate takes no overrides; the same case runs under run and plan
    args = [command, str(recipe), *overrides] if command != "validate" else [command, str(recipe)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "bad.yaml" in result.output or "command line" in result.output
    assert not no_processes
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "SENTINEL").exists()


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 15
