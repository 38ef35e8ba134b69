"""The DeepSpeed and accelerate config files users bring, real ones (tests/data/configs/SOURCES.json:
each file's repository, path and commit), through `validate` and `plan`: each is accepted with the
recipe values it sets, or refused with exit 2 naming the key and the fix, never a traceback.

Each file goes into the smallest recipe (mlp_regression, 2 processes, the recipe's defaults
elsewhere), as a user's first `launcher plan` would meet it. Refusals on this machine include fp16
(no GPU here), DeepSpeed's own schema, optimizers with no recipe equivalent and accelerate's
parallelisms launcher does not run.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from launcher.cli import main
from tests.helpers import ROOT

CORPUS = ROOT / "tests" / "data" / "configs"
SOURCES = json.loads((CORPUS / "SOURCES.json").read_text())["files"]
# Per file: the recipe keys (and values) the plan shows it took, or the key its refusal names.
EXPECTED = {path: source["expect"].get("refused", source["expect"]) for path, source in SOURCES.items()}

def _recipe(tmp_path, relative: str):
    """The smallest recipe naming the file, on 2 processes (an accelerate file says its own)."""
    if SOURCES[relative]["kind"] == "deepspeed":
        text = f"backend: {{name: deepspeed, deepspeed_config: {CORPUS / relative}}}\ncluster: {{nproc_per_node: 2}}\n"
    else:
        text = f"backend: {{accelerate_config: {CORPUS / relative}}}\n"
    path = tmp_path / (re.sub(r"\W", "_", relative) + ".yaml")
    path.write_text("recipe: mlp_regression\n" + text)
    return path


@pytest.fixture(scope="module")
def schema_cache(tmp_path_factory):
    """One DeepSpeed import judges every config (`validate` takes them all), its verdicts cached for
    the `plan` of each file below."""
    cache = tmp_path_factory.mktemp("cache")
    recipes = [_recipe(tmp_path_factory.mktemp("v"), relative) for relative in sorted(SOURCES)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAUNCHER_CACHE_DIR", str(cache))
        result = CliRunner().invoke(main, ["validate", *map(str, recipes)])
    refused = sum(isinstance(outcome, str) for outcome in EXPECTED.values())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(re.findall(r"^ok: ", result.output, re.M)) == len(EXPECTED) - refused
    assert len(re.findall(r"^error: ", result.output, re.M)) == refused
    return cache


def test_the_corpus_is_real_files_with_their_sources():
    deepspeed = [p for p, s in SOURCES.items() if s["kind"] == "deepspeed"]
    accelerate = [p for p, s in SOURCES.items() if s["kind"] == "accelerate"]
    assert len(deepspeed) >= 25 and len(accelerate) >= 10
    assert set(SOURCES) == set(EXPECTED)
    for relative, source in SOURCES.items():
        assert (CORPUS / relative).is_file()
        assert source["repository"] in ("huggingface/accelerate", "huggingface/transformers", "microsoft/DeepSpeed",
                                        "microsoft/DeepSpeedExamples")
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]) and relative.endswith(source["path"])


@pytest.mark.parametrize("relative", sorted(EXPECTED))
def test_each_config_is_taken_with_its_values_or_refused_naming_the_key(relative, tmp_path, schema_cache,
                                                                       monkeypatch):
    monkeypatch.setenv("LAUNCHER_CACHE_DIR", str(schema_cache))
    result = CliRunner().invoke(main, ["plan", str(_recipe(tmp_path, relative)), "--json"])
    expected = EXPECTED[relative]
    assert "Traceback" not in result.output
    if isinstance(expected, str):
        assert result.exit_code == 2, result.output
        assert f"`{expected}`" in result.output and "HINT:" in result.output
        return
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    taken = {entry["key"]: entry["value"] for entry in plan.get("taken", [])}
    assert {k: v for k, v in taken.items() if k in expected} == expected
    config = plan["recipe"]["backend"]["deepspeed_config"]
    assert "auto" not in json.dumps(config)  # every "auto" resolved
    for key, value in expected.items():  # what the plan shows taken is what the recipe now holds
        section, _, name = key.rpartition(".")
        holder = plan["recipe"]
        for part in section.split(".") if section else []:
            holder = holder[part]
        assert holder[name] == value, key
