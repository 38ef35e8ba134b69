"""The read-only commands (status, report, compare) on what users' disks hold: binary bytes in
metrics.jsonl, outputs that cannot be written, a mistyped run directory, a file the user already
had. A clear line and exit 2, never a traceback, nothing half-written (issue 32)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, launcher_env


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["launcher", *args], cwd=cwd, env=launcher_env(), capture_output=True, text=True,
                          timeout=120)


def _run_dir(root: Path, binary: bool = False) -> Path:
    run = root / "run"
    run.mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3, "samples_per_s": 100.0}) for s in range(1, 6)]
    lines.insert(2, json.dumps({"step": 3, "checkpoint_s": 0.02}))  # not an evaluation
    lines.append(json.dumps({"step": 5, "eval_loss": 0.3}))
    data = "\n".join(lines).encode() + b"\n"
    if binary:
        data = data.replace(b'{"step": 4', b'\xff\xfe\x00\x9c{"step": 4', 1)
    (run / "metrics.jsonl").write_bytes(data)
    (run / "recipe.yaml").write_text("train: {steps: 5}\n")  # a run directory to `launcher status`
    (run / "plan.json").write_text("{}\n")
    return run


def test_binary_bytes_in_metrics_spoil_one_line_in_status_report_and_compare(tmp_path):
    run = _run_dir(tmp_path, binary=True)
    status = _run("status", str(run))
    assert status.returncode == 0 and "last step 5" in status.stdout, status.stderr
    report = _run("report", str(run), "-o", str(tmp_path / "r.png"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    compared = _run("compare", str(run), "-o", str(tmp_path / "c.png"))
    assert compared.returncode == 0, compared.stderr
    assert "checkpoint_s" not in compared.stdout and "eval_loss final" in compared.stdout


@pytest.mark.parametrize(("output", "message"), [
    ("missing/r.png", "the directory {tmp}/missing does not exist"),
    ("r.xyz", "matplotlib does not write .xyz files"),
    ("r", "matplotlib does not write files without an extension"),
    ("readonly/r.png", "cannot be written (Permission denied)"),
])
@pytest.mark.parametrize("command", ["report", "compare"])
def test_an_output_that_cannot_be_written_is_one_clear_line_and_nothing_is_left(tmp_path, command, output, message):
    import os

    run = _run_dir(tmp_path)
    (tmp_path / "readonly").mkdir(mode=0o555)
    if os.geteuid() == 0 and output.startswith("readonly"):
        output = "/proc/r.png"  # root writes through 0555: a place no one can write
        message = "cannot be written (No such file or directory)"
    target = output if output.startswith("/") else str(tmp_path / output)
    done = _run(command, str(run), "-o", target)
    assert done.returncode == 2
    assert message.format(tmp=tmp_path) in done.stderr and "Traceback" not in done.stderr
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith((".r.", "r.", "c."))]  # nothing half-written


def test_compare_names_a_mistyped_run_directory_and_keeps_a_file_it_did_not_write(tmp_path):
    run = _run_dir(tmp_path)
    typo = _run("compare", str(run), str(tmp_path / "rnu"), cwd=tmp_path)
    assert typo.returncode == 2 and f"no metrics.jsonl in {tmp_path / 'rnu'}" in typo.stderr
    assert not (tmp_path / "compare.png").exists()
    (tmp_path / "compare.png").write_bytes(b"the user's own picture")
    kept = _run("compare", str(run), cwd=tmp_path)
    assert kept.returncode == 2 and "compare.png exists and no launcher compare wrote it" in kept.stderr
    assert (tmp_path / "compare.png").read_bytes() == b"the user's own picture"
    (tmp_path / "compare.png").unlink()
    for _ in range(2):  # its own picture it replaces
        again = _run("compare", str(run), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_a_cjk_run_name_is_one_note_not_a_warning_per_glyph(tmp_path):
    """Issue 32: a run named 日本語 printed one font warning per glyph; the picture is still made."""
    run = _run_dir(tmp_path)
    named = run.rename(tmp_path / "日本語の実験")
    done = _run("report", str(named), "-o", str(tmp_path / "r.png"))
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "Glyph" not in done.stderr
    from matplotlib import font_manager

    if not any("CJK" in f.name for f in font_manager.fontManager.ttflist):  # this machine: no CJK font
        notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
        assert len(notes) == 1 and "の実日本語験 as boxes" in notes[0]
