"""The benchmark in its CPU smoke mode: it runs end to end and writes the promised schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, launcher_env

FIELDS = {"case": str, "mode": str, "steps": int, "samples_per_s": float, "step_time_s": float,
          "device": str, "versions": dict, "time": str, "backend": str, "step_time_vs_plain": float}
OPTIONAL = {"tokens_per_s", "mfu", "peak_memory_gb", "launch_to_first_step_s", "launch_overhead_s", "startup",
            "profile"}
PHASES = {"to_worker_s", "imports_and_group_s", "build_s", "prepare_s", "restore_s", "first_step_s"}


@pytest.mark.heavy  # the GPU benchmark's CPU smoke run: half a minute
def test_tiny_benchmark_writes_one_line_per_case_and_mode(tmp_path):
    result = subprocess.run([sys.executable, "bench/run.py", "--tiny", "--out", str(tmp_path / "out"),
                             "--work", str(tmp_path / "work"), "--profile", "2"], cwd=ROOT, env=launcher_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    files = list((tmp_path / "out").glob("tiny-*.jsonl"))
    assert len(files) == 1
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    cases = ("gpt-tiny", "resnet-tiny")
    assert {(r["case"], r["mode"]) for r in records} == {(c, m) for c in cases for m in ("launcher", "plain")}
    for record in records:
        for key, kind in FIELDS.items():
            assert isinstance(record[key], kind), (key, record)
        assert set(record) == set(FIELDS) | OPTIONAL
        assert record["samples_per_s"] > 0 and record["step_time_s"] > 0
        assert record["versions"]["torch"]
    launched = [r for r in records if r["mode"] == "launcher"]
    for record in launched:
        assert 0 < record["launch_overhead_s"] < record["launch_to_first_step_s"] < 120
        # The phases partition the launch time: they add up to it.
        assert set(record["startup"]) == PHASES
        assert sum(record["startup"].values()) == pytest.approx(record["launch_to_first_step_s"], abs=0.02)
        # The profiled window: 2 steps of rank 0, CPU only (no device time to report).
        assert record["profile"]["steps"] == 2 and record["profile"]["wall_s_per_step"] > 0
        assert record["profile"]["device_busy_fraction"] is None
        table = (tmp_path / "out" / f"profile-{record['case']}-{record['time']}.txt").read_text()
        assert "Self CPU" in table
        top = json.loads((tmp_path / "out" / f"profile-{record['case']}-{record['time']}.json").read_text())["top"]
        assert top and all(row["self_s_per_step"] >= 0 for row in top)
        assert record["step_time_vs_plain"] == pytest.approx(
            record["step_time_s"] / next(p["step_time_s"] for p in records
                                         if p["case"] == record["case"] and p["mode"] == "plain"))
    assert {r["backend"] for r in launched} == {"accelerate ddp"}
    assert {r["backend"] for r in records if r["mode"] == "plain"} == {"plain"}
    gpt = next(r for r in launched if r["case"] == "gpt-tiny")
    assert gpt["tokens_per_s"] == pytest.approx(gpt["samples_per_s"] * 128)


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(out: Path) -> list[dict]:
    (path,) = out.glob("tiny-*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_failing_case_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch):
    bench = _bench_module()
    monkeypatch.setitem(bench.TINY_CASES, "bad-key", (bench.TINY_CASES["gpt-tiny"][0], ["model.no_such_key=1"], 8))

    def plain_loop_fails(*_args):
        raise RuntimeError("CUDA out of memory (as the plain loop might on a GPU)")

    monkeypatch.setattr(bench, "run_plain", plain_loop_fails)
    status = bench.main(["--tiny", "--cases", "bad-key", "gpt-tiny", "--out", str(tmp_path / "out"),
                         "--work", str(tmp_path / "work")])
    assert status == 1
    records = _lines(tmp_path / "out")
    assert [(r["case"], r["mode"]) for r in records] == [("bad-key", "launcher"), ("gpt-tiny", "launcher"),
                                                         ("gpt-tiny", "plain")]
    assert "model.no_such_key" in records[0]["error"] and "samples_per_s" not in records[0]
    # The plain loop failed after the launcher run: the launcher's figures are kept.
    assert records[1]["samples_per_s"] > 0 and records[1]["step_time_vs_plain"] is None
    assert "plain loop failed: RuntimeError: CUDA out of memory" in records[2]["error"]
    assert all(r["device"] and r["versions"]["torch"] for r in records)


def test_cases_that_no_longer_fit_the_deadline_are_recorded_as_skipped(tmp_path):
    status = _bench_module().main(["--tiny", "--deadline", "0", "--out", str(tmp_path / "out"),
                                   "--work", str(tmp_path / "work")])
    assert status == 1
    records = _lines(tmp_path / "out")
    assert [r["case"] for r in records] == ["gpt-tiny", "resnet-tiny"]
    assert all("skipped, 0 s left of --deadline 0" in r["error"] for r in records)
    assert not (tmp_path / "work" / "run-gpt-tiny").exists()  # nothing was started


@pytest.mark.heavy  # a minute: launcher runs, four recipes built, their loaders read
def test_cpu_proxy_benchmark_writes_every_section_in_its_schema(tmp_path):
    result = subprocess.run([sys.executable, "bench/run.py", "--cpu", "--tiny", "--out", str(tmp_path / "out"),
                             "--work", str(tmp_path / "work")], cwd=ROOT, env=launcher_env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = list((tmp_path / "out").glob("cpu-tiny-*.jsonl"))
    assert len(files) == 1
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    sections = {r["section"] for r in records}
    assert sections == {"host_overhead", "syncs", "attention", "loader", "launch", "optimizer",
                        "rank_gather", "plan", "hang_watch"}, sections
    sys.path.insert(0, str(ROOT))
    from bench.cpu import check_schema

    assert check_schema(files[0]) == []
    # The figures themselves are not asserted (they are timings); what the step does is.
    syncs = {(r["recipe"], r["backend"]): r["syncs_per_step"] for r in records if r["section"] == "syncs"}
    assert syncs and all(count == 0 for count in syncs.values()), syncs
    stored = {r["pipeline"]: r["stored_bytes_per_image"] for r in records if r["section"] == "loader"}
    # The JPEG store is smaller than the photos it came from and than the decoded store.
    assert stored["resnet224 data.jpeg_cache=256"] < stored["resnet224"] < stored["resnet224 data.decoded_cache=256"]
    assert stored["resnet224 data.jpeg_cache=256 data.jpeg_quality=85"] < stored["resnet224 data.jpeg_cache=256"]
    assert 0 <= next(r["padding_fraction"] for r in records if r.get("pipeline") == "bert") < 1
    assert {r["hosts"] for r in records if r["section"] == "plan"} == {1, 100}
    attention = {r["recipe"]: r for r in records if r["section"] == "attention"}
    assert attention["gpt"]["with_mask"] == 0 and attention["gpt"]["causal"] == attention["gpt"]["sdpa_calls"] > 0
    assert attention["bert"]["sdpa_calls"] > 0
    chosen = [r["optimizer"] for r in records if r["section"] == "optimizer" and r["chosen_for_offload"]]
    assert chosen == ["torch adamw (fused)"]  # what ZeRO-Offload steps with on the CPU
