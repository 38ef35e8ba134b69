"""The real loading paths, on local files: text dirs, saved datasets, JSON lines, image datasets."""

from __future__ import annotations

import json

import pytest

from launcher.data.corpora import CorpusError, load_documents
from launcher.data.images import ImageSourceError, load_split


def test_text_directory_files_and_blank_line_documents(tmp_path):
    (tmp_path / "a.txt").write_text("First doc. It has two sentences.\n\nSecond doc here.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("Third doc. Again two!\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    assert load_documents(str(tmp_path)) == [["First doc.", "It has two sentences."], ["Second doc here."],
                                             ["Third doc.", "Again two!"]]
    with pytest.raises(CorpusError, match="no such file"):
        load_documents(str(tmp_path / "missing"))


def test_saved_hf_dataset_and_json_lines(tmp_path):
    import datasets

    rows = {"text": ["One sentence. Another one.", "A second document."]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    assert load_documents(f"hf:{tmp_path / 'ds'}") == [["One sentence.", "Another one."], ["A second document."]]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in rows["text"]))
    assert load_documents(f"json:{tmp_path / 'd.jsonl'}", text_field="body")[1] == ["A second document."]
    with pytest.raises(CorpusError, match="no column 'text'"):
        load_documents(f"json:{tmp_path / 'd.jsonl'}")


def test_hf_image_dataset_and_bad_sources(tmp_path):
    import datasets
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((8, 8), v, dtype=np.uint8)) for v in (0, 255, 128)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "light"])})
    data = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1]}, features=features)
    datasets.DatasetDict({"train": data, "validation": data}).save_to_disk(str(tmp_path / "img"))
    dataset, classes = load_split(f"hf:{tmp_path / 'img'}", "val")
    assert classes == ["dark", "light"] and len(dataset) == 3
    image, label = dataset[1]
    assert image.shape == (3, 8, 8) and int(image.max()) == 255 and label == 1
    with pytest.raises(ImageSourceError, match="ImageFolder tree"):
        load_split(str(tmp_path / "nothing"), "train")
