"""Every subcommand's --help works; the CLI never imports torch to answer."""

import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from launcher.cli import main
from tests.helpers import ROOT

SUBCOMMANDS = ["run", "plan", "validate", "ls", "cp", "submit", "status", "logs", "report", "cancel", "sweep",
               "compare", "convert"]


@pytest.mark.parametrize("command", [[]] + [[name] for name in SUBCOMMANDS])
def test_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_every_subcommand_help_is_tested():
    assert set(main.commands) == set(SUBCOMMANDS)


def _imported_modules(code: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    return {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}


def test_cli_import_does_not_import_torch():
    modules = _imported_modules("import launcher.cli")
    assert "click" in modules  # the measurement works
    assert not modules & {"torch", "deepspeed", "accelerate", "transformers", "wandb", "numpy"}


def test_plan_does_not_import_torch():
    code = ("import sys; from launcher.cli import main\n"
            "try:\n    main(['plan', 'recipes/mlp-tiny.yaml', '--nproc', '2'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'plan imported torch'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "gradient accumulation" in result.stdout


def test_ls_lists_modules_and_recipe_files():
    result = CliRunner().invoke(main, ["ls"])
    assert result.exit_code == 0
    assert "mlp_regression" in result.output
    names = [line.split()[0] for line in result.output.split("recipe files")[1].splitlines()[1:]]
    assert sorted(names) == sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


def test_shipped_recipe_runs_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["plan", "mlp-tiny", "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert "gradient accumulation" in result.output
    result = CliRunner().invoke(main, ["validate", "mlp-tiny", "bert-pretrain-tiny.yaml"])
    assert result.exit_code == 0, result.output
    assert f"ok: {ROOT / 'recipes' / 'mlp-tiny.yaml'}" in result.output
    assert f"ok: {ROOT / 'recipes' / 'bert-pretrain-tiny.yaml'}" in result.output


def test_a_local_file_is_never_shadowed_by_a_shipped_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp-tiny").write_text("recipe: mlp_regression\ntrain: {steps: 0}\n")
    result = CliRunner().invoke(main, ["validate", "mlp-tiny"])
    assert result.exit_code == 2
    assert "`train.steps`: must be > 0" in result.output  # the local file was read, not the shipped one
    result = CliRunner().invoke(main, ["validate", "./no-such-recipe"])
    assert result.exit_code == 2 and "file not found" in result.output


def test_every_shipped_recipe_validates_but_for_the_data_a_gpu_template_points_at():
    """The GPU recipes are templates over the user's data (/data/...) and, for BERT phase 2, phase
    1's export (runs/...): validate names exactly those paths, and nothing else, until they exist."""
    files = sorted((ROOT / "recipes").glob("*.yaml"))
    assert files
    for path in files:
        result = CliRunner().invoke(main, ["validate", str(path)])
        if result.exit_code == 0:
            assert result.output == f"ok: {path}\n"
            continue
        problems = [line for line in result.output.splitlines() if line.startswith("  ") and "HINT" not in line]
        assert problems and all(re.search(r"`data\.(corpus|tokenizer|source)`: (/data/|runs/)\S+ does not exist", line)
                                for line in problems), result.output
    tiny = [p for p in files if "tiny" in p.stem]
    assert all(CliRunner().invoke(main, ["validate", str(p)]).exit_code == 0 for p in tiny)


def test_cp_copies_a_shipped_recipe_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = ROOT / "recipes" / "mlp-tiny.yaml"
    result = CliRunner().invoke(main, ["cp", "mlp-tiny", "mine.yaml"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine.yaml").read_bytes() == shipped.read_bytes()
    (tmp_path / "mine.yaml").write_text("# edited\n")
    result = CliRunner().invoke(main, ["cp", "mlp-tiny", "mine.yaml"])
    assert result.exit_code == 2 and "already exists" in result.output
    assert (tmp_path / "mine.yaml").read_text() == "# edited\n"
    (tmp_path / "sub").mkdir()
    assert CliRunner().invoke(main, ["cp", "bert-base-pretrain.yaml", "sub"]).exit_code == 0
    assert (tmp_path / "sub" / "bert-base-pretrain.yaml").is_file()


def test_cp_of_an_unknown_name_suggests_the_closest():
    result = CliRunner().invoke(main, ["cp", "mlp-tinyy", "x.yaml"])
    assert result.exit_code == 2
    assert "no shipped recipe named `mlp-tinyy`" in result.output and "did you mean `mlp-tiny`?" in result.output
