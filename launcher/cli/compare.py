"""`launcher compare RUN_DIR...`: the final and best evaluation metrics of several runs side by
side, and their curves overlaid in one PNG (report.draw_overlay). A sweep's directory stands for
its task-N runs, each labelled with the values it was given (sweep.json)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import click

from launcher.cli.common import fail
from launcher.cli.report import History, eval_keys, read_history
from launcher.rundir.layout import SWEEP_RECORD, SWEEP_TASK, RunDir

_LOWER_IS_BETTER = ("loss", "perplexity", "error")
DEFAULT_OUTPUT = "compare.png"


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help=f"Where to write the PNG of the overlaid curves (default: {DEFAULT_OUTPUT}, replaced only when "
                   "an earlier compare wrote it).")
def compare(run_dirs, output):
    """Final and best evaluation metrics of runs side by side (a sweep's directory: its points),
    and their curves overlaid in one PNG."""
    from launcher.cli.report import OutputError, check_output

    empty = [d for d in run_dirs if not expand([Path(d)])]
    if empty:  # a mistyped path among good ones is named, not dropped
        fail(ValueError(f"no metrics.jsonl in {', '.join(empty)}\n      HINT: give run directories (or a "
                        "sweep's) that have logged a step"))
    target = Path(output or DEFAULT_OUTPUT)
    if output is None and target.exists() and not made_by_compare(target):
        fail(ValueError(f"{target} exists and no launcher compare wrote it\n      HINT: give -o PATH (-o "
                        f"{target} replaces it)"))
    runs = expand([Path(d) for d in run_dirs])
    try:
        check_output(target)
    except ImportError as error:
        fail(ValueError(f"the PNG needs matplotlib ({error})\n      HINT: pip install matplotlib"))
    except OutputError as error:
        fail(error)
    click.echo(table(runs), nl=False)
    try:
        path = plot(runs, ", ".join(Path(d).name for d in run_dirs), target)
    except ImportError as error:
        fail(ValueError(f"the PNG needs matplotlib ({error})\n      HINT: pip install matplotlib"))
    except OutputError as error:
        fail(error)
    click.echo(f"wrote {path}", err=True)


def made_by_compare(path: Path) -> bool:
    """Whether a PNG says `launcher compare` made it (report.save_figure's Software text chunk)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"Software\x00launcher compare" in head


@dataclass
class Compared:
    label: str
    run_dir: Path
    history: History


def expand(run_dirs: list[Path]) -> list[Compared]:
    """Each run directory, or a sweep's task runs in task order, with a label each."""
    found = []
    for run_dir in run_dirs:
        tasks = sorted((p for p in run_dir.iterdir() if p.is_dir() and SWEEP_TASK.fullmatch(p.name)),
                       key=lambda p: int(p.name.split("-")[1])) if run_dir.is_dir() else []
        labels = _sweep_labels(run_dir)
        for run in tasks or [run_dir]:
            if RunDir(run).metrics.is_file():
                found.append(Compared(labels.get(run.name, str(run)), run, read_history(RunDir(run).metrics)))
    return found


def _sweep_labels(root: Path) -> dict[str, str]:
    try:
        points = json.loads((root / SWEEP_RECORD).read_text(encoding="utf-8"))["points"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {p["task"]: f"{p['task']}: {' '.join(p['values'])}" for p in points}


def lower_is_better(key: str) -> bool:
    return any(word in key for word in _LOWER_IS_BETTER)


def table(runs: list[Compared]) -> str:
    """One row per run: its last training loss, then each evaluation metric's final and best."""
    keys = sorted({k for run in runs for k in eval_keys(run.history)})
    header = ["run", "step", "loss"] + [f"{k} {which}" for k in keys for which in ("final", "best")]
    rows = []
    for run in runs:
        train = run.history.train
        row = [run.label, str(train[-1]["step"]) if train else "-", _fmt(train[-1]["loss"]) if train else "-"]
        for key in keys:
            values = [r[key] for r in run.history.evals if isinstance(r.get(key), (int, float))]
            finite = [v for v in values if math.isfinite(v)]
            best = (min if lower_is_better(key) else max)(finite) if finite else None
            row += [_fmt(values[-1]) if values else "-", _fmt(best) if best is not None else "-"]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]]) + "\n"


def plot(runs: list[Compared], title: str, output: Path) -> Path:
    """Their curves overlaid in one PNG (ImportError without matplotlib)."""
    from launcher.cli.report import draw_overlay

    return draw_overlay({run.label: run.history for run in runs}, title, output)


def _fmt(value: float) -> str:
    return f"{value:.4g}"
