"""Per-rank timing and stragglers: 2 real processes, one of them slowed in its data path."""

from __future__ import annotations

import re
import socket

from tests.helpers import launch, metrics, train_records, write_recipe
from tests.integration.test_faults import FAULT_RECIPE


def _run(tmp_path, name: str, *overrides: str):
    recipe = write_recipe(tmp_path / "r.yaml", FAULT_RECIPE)
    run_dir = tmp_path / name
    result = launch(recipe, run_dir, "train.steps=20", "train.log_every=4", "checkpoint.every_steps=0", *overrides,
                    nproc=2, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result.stdout


def test_a_rank_slow_in_its_data_path_is_named_with_its_host_and_the_cause(tmp_path):
    run_dir, console = _run(tmp_path, "slow", "data.slow_rank=1", "data.slow_data_s=0.03")
    host = socket.gethostname()
    lines = [line for line in console.splitlines() if "straggler:" in line]
    assert len(lines) == 1, console  # named once, after 3 log intervals in a row
    assert re.search(rf"straggler: rank 1 on {re.escape(host)} is \d+% slower than the median rank for 3 log "
                     r"intervals; its data is slow \(data \d+\.\d ms/step", lines[0]), lines[0]
    (event,) = [r for r in metrics(run_dir) if "straggler" in r]
    assert event["step"] == 12 and event["straggler"]["rank"] == 1 and event["straggler"]["cause"] == "data"
    (alert,) = [r["alert"] for r in metrics(run_dir) if "alert" in r and r["alert"]["kind"] == "straggler"]
    assert alert["level"] == "WARN" and "straggler rank 1" in alert["title"] and alert["text"] == lines[0].split(
        "]: ", 1)[-1]
    for record in train_records(run_dir):
        # 2 micro-batches a step (global 16, micro 4, 2 ranks): rank 1 waits >= 60 ms per step for data
        assert record["slowest_rank"] == 1 and record["slowest_host"] == host
        assert record["data_s_max"] >= 0.06 > record["data_s_min"]
        assert record["compute_s_max"] >= record["compute_s_median"] >= record["compute_s_min"] > 0


def test_no_straggler_is_named_when_the_ranks_are_alike(tmp_path):
    run_dir, console = _run(tmp_path, "even")
    assert "straggler" not in console
    assert not [r for r in metrics(run_dir) if "straggler" in r]
    assert [r["alert"]["kind"] for r in metrics(run_dir) if "alert" in r] == ["completion"]
    assert all("data_s_median" in r for r in train_records(run_dir))  # the timings are there all the same
