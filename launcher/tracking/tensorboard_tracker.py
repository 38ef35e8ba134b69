"""TensorBoard as a tracker (`tracking.backends: [tensorboard]`), from global rank 0, for clusters
that cannot reach W&B. Event files go to <run_dir>/tensorboard/; `tensorboard --logdir RUN_DIR`
reads them. Resume works as for W&B: every invocation appends its own event file to the same
directory, with the global optimizer step as the axis, and steps an earlier attempt already logged
are not written again (tracking/base.py: SkipLoggedSteps), so each step appears once across restarts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from launcher.rundir.layout import RunDir
from launcher.tracking.base import TrackerContext


def open_tracker(context: TrackerContext) -> TensorBoardTracker:
    return TensorBoardTracker(RunDir(context.run_dir).tensorboard)


class TensorBoardTracker:
    mode = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def _guard(self, action) -> None:
        if self.writer is None:
            return
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - the tracker must never stop training
            print(f"tracking: TensorBoard failed ({type(exc).__name__}: {exc}); it is off, training continues "
                  "(metrics.jsonl keeps every step)", file=sys.stderr, flush=True)
            self.writer = None

    def log(self, record: dict, step: int) -> None:
        def write():
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, global_step=step)

        self._guard(write)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |"
                  for row in rows]
        self._guard(lambda: self.writer.add_text(name, "\n".join(lines), global_step=step))

    def log_image(self, name: str, path: str, step: int) -> None:
        def write():
            import numpy as np
            from PIL import Image

            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(name, pixels, global_step=step, dataformats="HWC")

        self._guard(write)

    def log_model(self, directory: str, name: str) -> None:
        pass  # the export stays in the run directory; TensorBoard keeps no artifacts

    def alert(self, kind: str, title: str, text: str, level: str, wait_s: float) -> None:
        self._guard(lambda: self.writer.add_text(f"alerts/{kind}", f"**{level}: {title}**\n\n{text}"))

    def finish(self, exit_code: int = 0) -> None:
        self._guard(self.writer.close)
