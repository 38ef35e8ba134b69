"""`launcher report RUN_DIR`: one PNG of a run's curves, from its metrics.jsonl.

Four panels over the global step: training and evaluation loss, the other evaluation metrics,
the learning rate, and throughput. metrics.jsonl holds one history across resumes and restarts
(a resumed run drops the records after its checkpoint); each start writes a startup record at its
first step, and those steps are marked on every panel. `launcher compare` and a sweep's summary
overlay several runs with `draw_overlay`. matplotlib is imported in the drawing functions only,
with the file-only Agg backend (no display on a cluster node).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click

from launcher.cli.common import fail
from launcher.rundir.layout import RunDir


@click.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the PNG (default: RUN_DIR/report.png).")
def report(run_dir, output):
    """Plot a run's loss, evaluation metrics, learning rate and throughput over its steps into a
    PNG, resumes and restarts marked."""
    run = RunDir(run_dir)
    if not run.metrics.is_file():
        fail(ValueError(f"{run_dir}: no metrics.jsonl\n      HINT: give a run directory that has logged a step"))
    history = read_history(run.metrics)
    if not history.train and not history.evals:
        fail(ValueError(f"{run.metrics}: no step logged yet\n      HINT: wait for the first log step"))
    try:
        check_output(Path(output) if output else run.report)
        path = draw(history, Path(run_dir).resolve().name, Path(output) if output else run.report)
    except ImportError as error:  # matplotlib comes with the tracking extra
        fail(ValueError(f"launcher report needs matplotlib ({error})\n      HINT: pip install matplotlib"))
    except OutputError as error:
        fail(error)
    click.echo(f"wrote {path}")


class OutputError(ValueError):
    """A picture that cannot be written where asked (a missing or read-only directory, a full disk,
    a format matplotlib does not write); nothing is left there."""


def check_output(output: Path) -> None:
    """OutputError, before anything is drawn or printed, for a picture that could not be written:
    a format matplotlib does not write, a directory that does not exist (ImportError: no matplotlib)."""
    from matplotlib.figure import Figure

    suffix = output.suffix.lower().lstrip(".")
    formats = Figure().canvas.get_supported_filetypes()
    if suffix not in formats:
        raise OutputError(f"{output}: matplotlib does not write {'.' + suffix if suffix else 'files without an '}"
                          f"{' files' if suffix else 'extension'}\n      HINT: name a .png, .pdf or .svg file")
    if not output.parent.is_dir():
        raise OutputError(f"{output}: the directory {output.parent} does not exist\n      HINT: create it, or "
                          "give another -o path")


def save_figure(figure, output: Path, software: str) -> Path:
    """The figure into `output`, whole or not at all: drawn into a temporary file beside it, then
    renamed over it. The PNG says which launcher command made it (compare checks that before it
    replaces a file)."""
    import warnings

    check_output(output)
    suffix = output.suffix.lower().lstrip(".")
    partial = output.with_name(f".{output.name}.partial.{suffix}")
    try:
        with warnings.catch_warnings(record=True) as caught:  # matplotlib warns once per missing glyph
            warnings.simplefilter("always")
            figure.savefig(partial, dpi=100, metadata={"Software": software} if suffix == "png" else None)
        partial.replace(output)
        _missing_glyphs_note(caught, output)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise OutputError(f"{output}: cannot be written ({error.strerror or error})\n      HINT: give -o a "
                          "writable place with free space") from None
    return output


# Records that are not evaluations: the start's timings, a checkpoint's cost, a resharding's.
_NOT_EVAL = {"step", "startup", "launch_to_first_step_s", "launch_overhead_s", "checkpoint_s", "reshard_s",
             "from_world_size"}


@dataclass
class History:
    train: list[dict] = field(default_factory=list)  # records with a training loss
    evals: list[dict] = field(default_factory=list)  # evaluation records
    starts: list[int] = field(default_factory=list)  # first step of each start after the first


def read_history(metrics_file: Path) -> History:
    history = History()
    # A byte that is not UTF-8 (a disk error, a stray write) spoils its line only: skipped below.
    for line in metrics_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if not isinstance(record, dict) or "step" not in record:
            continue
        if "startup" in record:
            if record["step"] > 1:
                history.starts.append(int(record["step"]) - 1)  # resumed after this step
        elif "loss" in record:
            history.train.append(record)
        elif any(_number(v) for k, v in record.items() if k not in _NOT_EVAL):
            history.evals.append(record)
    return history


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def draw(history: History, title: str, output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _fonts()
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    loss, metrics, lr, speed = axes.flat
    _curve(loss, history.train, "loss", "train loss")
    _curve(loss, history.evals, "eval_loss", "eval loss", marker="o")
    for key in [k for k in eval_keys(history) if k != "eval_loss"]:
        _curve(metrics, history.evals, key, key, marker="o")
    _curve(lr, history.train, "lr", "learning rate")
    _curve(speed, history.train, "samples_per_s", "samples/s")
    for axis, name in zip(axes.flat, ("loss", "evaluation", "learning rate", "throughput"), strict=True):
        axis.set_title(name)
        axis.set_xlabel("step")
        for step in history.starts:
            axis.axvline(step, color="grey", linestyle="--", linewidth=1)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
        else:
            axis.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=axis.transAxes)
    starts = f"; resumed after step {', '.join(map(str, history.starts))} (dashed)" if history.starts else ""
    figure.suptitle(title + starts)
    try:
        return save_figure(figure, output, "launcher report")
    finally:
        plt.close(figure)


# Fonts with CJK glyphs, tried after DejaVu Sans where installed (matplotlib falls back per glyph).
_FALLBACK_FONTS = ["Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Source Han Sans", "WenQuanYi Zen Hei",
                   "Droid Sans Fallback", "AR PL UMing CN", "IPAGothic", "Unifont"]


def _fonts() -> None:
    """Run names in any script: DejaVu Sans, then whichever CJK font this machine has."""
    import matplotlib
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", *(f for f in _FALLBACK_FONTS if f in installed)]


def _missing_glyphs_note(caught: list, output: Path) -> None:
    import re

    missing = sorted({chr(int(m.group(1))) for w in caught if (m := re.search(r"Glyph (\d+) ", str(w.message)))})
    if missing:
        shown = "".join(missing[:12]) + ("..." if len(missing) > 12 else "")
        click.echo(f"note: {output} shows {shown} as boxes: no installed font has them (install a CJK font, e.g. "
                   "Debian's fonts-noto-cjk, for matplotlib to use)", err=True)


def eval_keys(history: History) -> list[str]:
    return sorted({k for r in history.evals for k, v in r.items() if k not in _NOT_EVAL and _number(v)})


def draw_overlay(histories: dict[str, History], title: str, output: Path) -> Path:
    """Several runs on shared axes (`launcher compare`, a sweep's summary): one panel per
    evaluation metric and one of training loss, a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _fonts()
    keys = sorted({k for h in histories.values() for k in eval_keys(h)})
    panels = ["loss", *keys]
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), constrained_layout=True,
                                squeeze=False)
    for axis, panel in zip(axes.flat, panels, strict=False):
        for label, history in histories.items():
            if panel == "loss":
                _curve(axis, history.train, "loss", label)
            else:
                _curve(axis, history.evals, panel, label, marker="o")
        axis.set_title("train loss" if panel == "loss" else panel)
        axis.set_xlabel("step")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="x-small")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(title)
    try:
        return save_figure(figure, output, "launcher compare")
    finally:
        plt.close(figure)


def _curve(axis, records: list[dict], key: str, label: str, marker: str | None = None) -> None:
    points = [(r["step"], r[key]) for r in records if _number(r.get(key))]
    if points:
        steps, values = zip(*points, strict=True)
        axis.plot(steps, values, label=label, marker=marker, markersize=3)
