"""Third-party chatter a healthy run does not need on its console, kept in a file instead.

torch, DeepSpeed and Accelerate print deprecation notices at every ZeRO step, a CPU accelerator
warning, "No CUDA runtime is found" on CPU hosts and an op build banner: 46 lines in a 6-step
ZeRO-3 run, drowning the step lines. Each rule below names one known message; anything else still
shows. What is held back goes to logs/ranks/rank-N-quieted.log, so nothing is lost, and
`launcher run --verbose` (LAUNCHER_VERBOSE=1) shows it all on the console as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from pathlib import Path

# (category, message regex): warnings about the libraries' own code, not the user's.
KNOWN_WARNINGS: tuple[tuple[type[Warning], re.Pattern], ...] = (
    # DeepSpeed's ZeRO calls the old collective names; torch warns at every call site.
    (FutureWarning, re.compile(r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")),
)
# Loggers whose warnings only say that this machine has no GPU.
QUIET_LOGGERS = ("torch.utils.cpp_extension",)  # "No CUDA runtime is found, using CUDA_HOME=..."
_BUILT_BANNER = re.compile(r"^DeepSpeed \S+ built successfully$")
_side_file: Path | None = None


def verbose() -> bool:
    return os.environ.get("LAUNCHER_VERBOSE", "") not in ("", "0")


def quiet_third_parties(has_gpu: bool, side_file: Path) -> None:
    """Called once per rank, before DeepSpeed or Accelerate is imported."""
    global _side_file
    if verbose():
        return
    _side_file = side_file
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if any(issubclass(category, known) and pattern.search(str(message)) for known, pattern in KNOWN_WARNINGS):
            _keep(warnings.formatwarning(message, category, filename, lineno, line))
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    handler = logging.FileHandler(side_file, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False  # not to torch's console handler
    if not has_gpu:
        # DeepSpeed otherwise probes for accelerators and warns "Setting accelerator to CPU".
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


@contextlib.contextmanager
def without_build_banner():
    """DeepSpeed prints "DeepSpeed <op> built successfully" on stdout each time it loads a CPU op;
    everything else printed meanwhile is passed on."""
    if verbose() or _side_file is None:
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        for line in captured.getvalue().splitlines(keepends=True):
            if _BUILT_BANNER.match(line.strip()):
                _keep(line)
            else:
                sys.stdout.write(line)


def _keep(text: str) -> None:
    if _side_file is None:
        return
    try:
        with open(_side_file, "a", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        pass  # a full disk must not end a run over a deprecation notice
