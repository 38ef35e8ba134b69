"""A corpus, image folder or tokenizer that does not exist is a recipe error before launch."""

import pytest
from click.testing import CliRunner

from launcher.cli import main
from launcher.data.paths import missing_local_path
from tests.helpers import ROOT


def test_local_paths_are_found_and_package_sources_are_left_to_the_nodes(tmp_path):
    (tmp_path / "books.txt").write_text("x")
    assert missing_local_path(str(tmp_path / "books.txt")) is None
    assert missing_local_path(f"json:{tmp_path / 'books.txt'}") is None
    assert missing_local_path(f"hf:{tmp_path}/gone") == f"{tmp_path}/gone"
    assert missing_local_path("package:austen") is None and missing_local_path("") is None


@pytest.mark.parametrize("recipe, overrides, keys", [
    ("bert-pretrain-tiny", ["data.corpus=json:/nowhere/x.jsonl", "data.tokenizer=/nowhere/tok"],
     ["data.corpus", "data.tokenizer"]),
    ("gpt-finetune-tiny", ["data.corpus=/nowhere/book.txt"], ["data.corpus"]),
    ("resnet-transfer-tiny", ["data.source=hf:/nowhere/images"], ["data.source"]),
])
def test_plan_names_each_missing_input_and_starts_nothing(recipe, overrides, keys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["plan", f"recipes/{recipe}.yaml", *overrides, "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    for key in keys:
        assert f"`{key}`: /nowhere/" in result.output
    assert "does not exist" in result.output and not (tmp_path / "r").exists()
