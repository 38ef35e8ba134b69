"""Image files users' folders hold: an empty .jpg, a text file named .jpg, a truncated JPEG or PNG
(issue 32: tracebacks after start, the first without the file's name, and `jpeg-*.tmp-PID`
directories left in the cache). Named before start; named again where read; no half store left."""

from __future__ import annotations

import subprocess

import pytest

from launcher.data.cache import build_once
from launcher.data.image_files import folder_image_problems, image_problem
from launcher.data.jpeg_store import ImageFileError, reencode
from tests.helpers import ROOT, launcher_env
from tests.unit.recipes.test_resnet import SIZES, _image_tree


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "val"):
        _image_tree(root / split, SIZES)
    return root


def _damage(tree):
    folder = tree / "train" / "class0"
    good = (folder / "0.jpg").read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture\n")
    (folder / "cut.jpg").write_bytes(good[: len(good) // 2])
    png = (tree / "train" / "class1" / "1.png").read_bytes()
    (tree / "train" / "class1" / "cut.png").write_bytes(png[:-40])
    return folder


def test_each_kind_of_bad_file_is_named_with_its_reason(tree):
    folder = _damage(tree)
    assert image_problem(str(folder / "0.jpg")) is None
    assert image_problem(str(folder / "empty.jpg")) == "is empty (0 bytes)"
    assert image_problem(str(folder / "notes.jpg")) == "is not a JPEG file (its first bytes are not a JPEG's)"
    assert image_problem(str(folder / "cut.jpg")) == "is a truncated JPEG (no end-of-image marker)"
    assert image_problem(str(tree / "train" / "class1" / "cut.png")) == "is a truncated PNG (no IEND chunk)"
    assert len(folder_image_problems(str(tree))) == 4


def test_plan_names_the_bad_files_before_anything_starts(tree, tmp_path):
    _damage(tree)
    done = subprocess.run(["launcher", "plan", "resnet-transfer-tiny", f"data.source={tree}",
                           'model.weights=""'], cwd=ROOT, env=launcher_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "`data.source`: 4 image file(s) cannot be read" in done.stderr
    assert "cut.jpg is a truncated JPEG" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_file_met_while_building_a_store_is_named_and_leaves_no_temporary_directory(tree, tmp_path):
    folder = _damage(tree)
    with pytest.raises(ImageFileError, match="notes.jpg: cannot be read as an image"):
        reencode(folder / "notes.jpg", 64, 90)

    def build(directory):
        (directory / "images.bin").write_bytes(b"partial")
        reencode(folder / "cut.png" if (folder / "cut.png").exists() else folder / "notes.jpg", 64, 90)
        return {}

    cache = tmp_path / "cache" / "jpeg-abc"
    with pytest.raises(ImageFileError):
        build_once(cache, "test", build)
    assert list((tmp_path / "cache").iterdir()) == []  # no jpeg-abc.tmp-PID left
