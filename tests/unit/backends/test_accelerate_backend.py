"""The Accelerate backend's model access, in a fresh interpreter (what it imports is the point)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = """
import sys, tempfile, torch, torch.distributed as dist
from launcher.config.load import load_recipe
from launcher.backends.accelerate_backend import AccelerateBackend

dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
recipe = load_recipe("recipes/mlp-tiny.yaml", ["backend.name=accelerate"]).recipe
backend = AccelerateBackend(recipe, None, None)
model = torch.nn.Linear(4, 2)
backend.prepare(model, [{"params": list(model.parameters())}])
backend.model = torch.nn.parallel.DistributedDataParallel(backend.model)  # as on 2 ranks
assert backend.unwrapped() is model
state, _ = backend._full_state()
assert sorted(state) == ["bias", "weight"], sorted(state)  # no "module." prefix
print("deepspeed imported:", "deepspeed" in sys.modules)
"""


def test_the_model_inside_ddp_is_reached_without_importing_deepspeed():
    """Accelerate's own unwrap_model imports DeepSpeed when it is installed (1-2 s of CPU in every
    rank at the first save); this backend never builds a DeepSpeed engine, so it unwraps DDP itself."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deepspeed imported: False" in done.stdout, done.stdout + done.stderr[-2000:]
