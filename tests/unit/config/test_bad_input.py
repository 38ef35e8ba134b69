"""The catalogue of malformed recipes and overrides: exit 2, the key named, nothing started."""

import subprocess

import pytest
from click.testing import CliRunner

from launcher.cli import main
from tests.helpers import TINY_RECIPE

GOOD = TINY_RECIPE + "cluster: {nproc_per_node: 2}\n"

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
    # Inputs that used to pass validation and fail only once the ranks ran, or never finish reading.
    ("alias bomb", GOOD + "description: &a [x, x, x, x, x, x, x, x, x, x]\nz1: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
     "z2: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nz3: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
     "z4: &e [*d, *d, *d, *d, *d, *d, *d, *d]\nz5: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n", [],
     "anchors and aliases"),
    ("recursive alias", GOOD + "tracking: {tags: &t [a, *t]}\n", [], "contains it"),
    ("negative eps", GOOD + "optimizer: {eps: -1}\n", [], "optimizer.eps"),
    ("negative momentum", GOOD + "optimizer: {name: sgd, momentum: -5}\n", [], "optimizer.momentum"),
    ("nesterov without momentum", GOOD + "optimizer: {name: sgd, momentum: 0, nesterov: true}\n", [],
     "optimizer.nesterov"),
    ("seed past 64 bits", GOOD + "seed: 100000000000000000000000\n", [], "`seed`"),
    ("negative seed", GOOD, ["seed=-1"], "`seed`"),
    ("zero stage 7", GOOD + "backend: {name: deepspeed, deepspeed_config: {zero_optimization: {stage: 7}}}\n", [],
     "backend.deepspeed_config.zero_optimization.stage"),
    ("deepspeed batch key", GOOD + "backend: {name: deepspeed, deepspeed_config: {train_batch_size: 8}}\n", [],
     "backend.deepspeed_config.train_batch_size"),
    ("date in deepspeed_config", GOOD + "backend: {name: deepspeed, deepspeed_config: {comment: 2024-01-01}}\n", [],
     "read by YAML as a date"),
    ("NUL in env", GOOD.replace("{nproc_per_node: 2}", '{nproc_per_node: 2, env: {A: "x\\0y"}}'), [], "NUL"),
    ("base-60 steps", GOOD.replace("steps: 5", "steps: 12:30"), [], "base-60"),
    ("octal micro", GOOD.replace("micro: 4", "micro: 04"), [], "octal"),
    ("name ..", GOOD + "name: '..'\n", [], "not a safe directory name"),
    ("name with slash", GOOD, ["name=../../etc"], "not a safe directory name"),
    ("skip with deepspeed", GOOD.replace("steps: 5", "steps: 5, on_nonfinite: skip") + "backend: {name: deepspeed}\n",
     [], "train.on_nonfinite"),
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


@pytest.mark.parametrize("command", ["run", "plan", "validate"])
def test_a_device_or_a_huge_file_is_refused_without_reading_it(tmp_path, no_processes, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(2 << 20)  # 2 MiB, sparse: refused on its size alone
    for path, expected in (("/dev/zero", "not a regular file"), (str(big), "more than the 1,048,576")):
        result = CliRunner().invoke(main, [command, path])
        assert result.exit_code == 2 and expected in result.output, result.output
    assert not no_processes and not (tmp_path / "runs").exists()


def test_a_valid_two_process_deepspeed_config_passes_validate(tmp_path):
    """DeepSpeed's own schema check ran as for one process and refused `16 != 4 * 2 * 1`."""
    recipe = tmp_path / "ds.yaml"
    recipe.write_text(GOOD + "backend: {name: deepspeed, zero_stage: 2, deepspeed_config: {train_batch_size: 16, "
                      "train_micro_batch_size_per_gpu: 4, gradient_accumulation_steps: 2, "
                      "zero_optimization: {reduce_scatter: true}}}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    recipe.write_text(GOOD + "backend: {name: deepspeed, deepspeed_config: {zero_optimization: {no_such: 1}}}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2 and "no_such" in result.output
