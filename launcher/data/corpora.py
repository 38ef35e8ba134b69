"""Documents (lists of sentences) from a corpus spec string.

A spec is one of:
    path/to/file.txt | path/to/dir      plain text; blank lines separate documents (BERT's format)
    hf:path/to/dataset                  a local `datasets` dataset saved with save_to_disk (`text` column)
    json:path/to/file.jsonl             JSON lines with a `text` field, read with `datasets`
    package:austen                      Jane Austen's six novels (Debian r-cran-janeaustenr), by chapter
    package:kjv                         the King James Bible (Debian bible-kjv), by chapter
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

Document = list[str]

AUSTEN_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")
# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before a capital.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z])")
_CHAPTER = re.compile(r"^\s*(CHAPTER|Chapter)\b")
_KJV_CHAPTER = re.compile(r"^(?:[1-3] )?[A-Z][A-Za-z ]+ \d+$")


class CorpusError(ValueError):
    pass


def load_documents(spec: str, text_field: str = "text") -> list[Document]:
    if spec.startswith("package:"):
        name = spec.split(":", 1)[1]
        readers = {"austen": austen_documents, "kjv": kjv_documents}
        if name not in readers:
            raise CorpusError(f"unknown packaged corpus {name!r}; choose one of {sorted(readers)}")
        return readers[name]()
    if spec.startswith("hf:") or spec.startswith("json:"):
        return _hf_documents(spec, text_field)
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".text", ""))
        if not files:
            raise CorpusError(f"{spec}: no .txt files in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise CorpusError(f"{spec}: no such file or directory")
    documents = []
    for file in files:
        documents += text_documents(file.read_text(encoding="utf-8", errors="replace"))
    return documents


def split_sentences(text: str) -> list[str]:
    text = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(text) if s] if text else []


def text_documents(text: str) -> list[Document]:
    """Blank lines separate documents; lines inside are joined and split into sentences."""
    documents = []
    for block in re.split(r"\n\s*\n", text):
        sentences = split_sentences(block)
        if sentences:
            documents.append(sentences)
    return documents


def austen_documents(data_dir: Path = AUSTEN_DIR) -> list[Document]:
    """One document per chapter of the six novels."""
    from launcher.data.rdata import read_lazyload

    if not data_dir.is_dir():
        raise CorpusError(f"{data_dir} not found: install Debian's r-cran-janeaustenr "
                          "(apt-get install r-cran-janeaustenr)")
    documents = []
    for _, lines in sorted(read_lazyload(data_dir).items()):
        chapter: list[str] = []
        for line in [*lines, "CHAPTER END"]:
            if _CHAPTER.match(line or ""):
                sentences = split_sentences(" ".join(chapter))
                if len(sentences) >= 2:
                    documents.append(sentences)
                chapter = []
            else:
                chapter.append(line or "")
    return documents


def kjv_documents() -> list[Document]:
    """One document per chapter, one sentence per verse, from Debian's `bible` program."""
    program = shutil.which("bible")
    if not program:
        raise CorpusError("the `bible` program is missing: install Debian's bible-kjv (apt-get install bible-kjv)")
    dump = subprocess.run([program, "gen1:1-rev22:21"], capture_output=True, text=True, check=True,
                          timeout=120).stdout
    documents: list[Document] = []
    verses: list[str] = []
    previous = ""
    for line in dump.splitlines():
        if not previous.strip() and _KJV_CHAPTER.match(line):  # "Genesis 1" after a blank line
            if verses:
                documents.append(verses)
            verses = []
        elif re.match(r"^\s+\d+ ", line):
            verses.append(line.split(maxsplit=1)[1].strip())
        elif line.strip() and verses:
            verses[-1] += " " + line.strip()
        previous = line
    if verses:
        documents.append(verses)
    return documents


def _hf_documents(spec: str, text_field: str) -> list[Document]:
    import datasets

    kind, location = spec.split(":", 1)
    if kind == "hf":
        dataset = datasets.load_from_disk(location)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset["train"]
    else:
        dataset = datasets.load_dataset("json", data_files=location, split="train")
    if text_field not in dataset.column_names:
        raise CorpusError(f"{spec}: no column {text_field!r} (columns: {dataset.column_names})")
    return [s for s in (split_sentences(t or "") for t in dataset[text_field]) if s]
