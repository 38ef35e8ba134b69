from pathlib import Path

import pytest


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe file from text and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
