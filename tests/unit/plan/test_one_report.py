"""Schema problems and the batch arithmetic's come in one report, not one after the other."""

from click.testing import CliRunner

from launcher.cli import main
from tests.helpers import ROOT

BAD = """recipe: mlp_regression
optimizer: {lr: abc}
batch: {global: 30, micro: 8}
cluster: {nproc_per_node: 2}
"""


def _check(output: str) -> None:
    assert "2 problems" in output, output
    assert "`optimizer.lr`: expected a number" in output
    assert "`batch.global`: 30 is not divisible by batch.micro x world size = 8 x (1 node x 2 processes)" in output


def test_validate_reports_a_schema_error_and_a_batch_that_does_not_divide_together(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(BAD)
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2
    _check(result.output)


def test_plan_does_so_for_overrides_and_flags(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["plan", "recipes/mlp-tiny.yaml", "--nproc", "2", "optimizer.lr=abc",
                                       "batch.global=30", "batch.micro=8"])
    assert result.exit_code == 2
    _check(result.output)


def test_invalid_batch_values_are_reported_once_by_the_schema(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["plan", "recipes/mlp-tiny.yaml", "batch.global=zero", "optimizer.lr=abc"])
    assert result.exit_code == 2 and "2 problems" in result.output and "not divisible" not in result.output
