"""W&B with the real wandb library in offline mode, read back with wandb's own reader."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import FIXTURES, ROOT, launch, launcher_env, metrics, wait_for_step, write_recipe

RECIPE = f"""\
recipe: {FIXTURES / "uneven_recipe.py"}
model: {{hidden: 16, dropout: 0.0}}
data: {{samples: 96}}
optimizer: {{lr: 1e-2}}
batch: {{global: 16, micro: 4}}
train: {{steps: 12, log_every: 1, eval_every: 0}}
checkpoint: {{every_steps: 3}}
tracking: {{mode: offline, project: launcher-tests, tags: [ci]}}
"""
SECRET = "wandb-key-7f3c9a1e5b2d4c6e8f"


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the run's transaction log, via `wandb leet inspect --json`."""
    wandb = str(Path(sys.executable).parent / "wandb")
    out = subprocess.run([wandb, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def history_steps(records: list[dict]) -> list[int]:
    return [r["history"]["item"]["global_step"] for r in records if r["type"] == "history"]


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_two_processes_make_one_run_with_config_and_metrics(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    result = launch(recipe, tmp_path / "run", "tracking.log_model=true", nproc=2, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = offline_runs(tmp_path / "run")
    assert len(runs) == 1  # rank 1 created none
    run_id = json.loads((tmp_path / "run" / "tracking.json").read_text())["run_id"]
    assert runs[0].name.endswith(run_id)
    records = wandb_records(runs[0])
    run_record = next(r["run"] for r in records if r["type"] == "run")
    config = run_record["config"]["update"]
    assert config["launch"]["world_size"] == 2 and config["launch"]["accumulation"] == 2
    assert config["batch"]["global"] == 16 and config["optimizer"]["lr"] == 0.01
    assert run_record["project"] == "launcher-tests"
    assert history_steps(records) == list(range(1, 13))  # one history row per optimizer step
    losses = {r["history"]["item"]["global_step"]: r["history"]["item"].get("loss")
              for r in records if r["type"] == "history" and "loss" in r["history"]["item"]}
    jsonl = {r["step"]: r["loss"] for r in metrics(tmp_path / "run") if "loss" in r}
    assert losses == jsonl
    (alert,) = [r["alert"] for r in records if r["type"] == "alert"]  # wandb's own alert, kept offline
    assert alert["level"] == "INFO" and alert["title"] == "run: finished" and "reached step 12 of 12" in alert["text"]
    artifacts = [r for r in records if r["type"] == "artifact"]
    assert len(artifacts) == 1 and artifacts[0]["artifact"]["type"] == "model"
    assert any(entry["path"] == "model.pt" for entry in artifacts[0]["artifact"]["manifest"]["contents"])


def test_kill_after_checkpoint_then_resume_keeps_one_run_and_one_step_axis(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("samples: 96}", "samples: 96, step_delay: 0.15}"))
    run_dir = tmp_path / "run"
    argv = ["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=launcher_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for_step(run_dir, 7, proc=proc)  # logged after the step-6 checkpoint
    import os

    os.killpg(proc.pid, signal.SIGKILL)  # everything: launcher, torchrun, ranks
    proc.wait()
    killed_at = max(r["step"] for r in metrics(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text().strip() in ("step-00000006", "step-00000009")

    result = launch(recipe, run_dir, nproc=2, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [r["step"] for r in metrics(run_dir) if "loss" in r]
    assert steps == list(range(1, 13))  # no gap, no duplicate in the JSONL file
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # same run id twice
    train_steps = [s for run in runs for s in history_steps(wandb_records(run))[:]]
    train_steps = sorted(train_steps)
    assert train_steps == list(range(1, 13)), (killed_at, train_steps)


def test_online_without_server_falls_back_and_no_secret_leaks(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("mode: offline", "mode: online, init_timeout: 10"))
    env = launcher_env(WANDB_API_KEY=SECRET, WANDB_BASE_URL="http://127.0.0.1:9")  # a closed port
    result = launch(recipe, tmp_path / "run", f"cluster.env.WANDB_API_KEY={SECRET}", nproc=2, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "fell back to offline" in output
    assert len(offline_runs(tmp_path / "run")) == 1
    assert SECRET not in output
    leaked = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
    config = next(r["run"]["config"]["update"] for r in wandb_records(offline_runs(tmp_path / "run")[0])
                  if r["type"] == "run")
    assert config["cluster"]["env"]["WANDB_API_KEY"] == "<redacted>"


def _wandb_services_of(run_dir: Path) -> list[int]:
    """Pids of wandb-core processes serving a rank of this run (their --pid is that rank)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not argv[0].endswith("wandb-core") or "--pid" not in argv:
                continue
            owner = argv[argv.index("--pid") + 1]
            if str(run_dir) in Path(f"/proc/{owner}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def test_tracker_lost_mid_run_loses_no_step_locally_and_training_goes_on(tmp_path):
    """docs/faults.md 14, W&B gone mid-run: its service process (wandb-core) is SIGKILLed after step 4.
    The job warns once, keeps training, exits 0, and metrics.jsonl holds every step."""
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("samples: 96}", "samples: 96, step_delay: 0.1}"))
    run_dir = tmp_path / "run"
    argv = ["launcher", "run", str(recipe), "--nproc", "2", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    wait_for_step(run_dir, 4, proc=proc)
    services = _wandb_services_of(run_dir)
    assert len(services) == 1  # only global rank 0 tracks
    import os

    os.kill(services[0], signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert output.count("tracking disabled, training continues") == 1
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == list(range(1, 13))


def test_a_nan_and_the_failure_it_causes_are_alerts_in_wandb_tensorboard_and_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("lr: 1e-2", "lr: 1e30, grad_clip: 0"))
    run_dir = tmp_path / "run"
    result = launch(recipe, run_dir, "tracking.backends=[wandb,tensorboard]", nproc=2, timeout=300)
    assert result.returncode not in (0, 2), result.stderr[-3000:]  # stopped on the non-finite loss
    status = result.returncode
    alerts = [r for r in metrics(run_dir) if "alert" in r]
    assert [a["alert"]["kind"] for a in alerts] == ["nonfinite", "failure"], alerts
    nan, failed = (a["alert"] for a in alerts)
    assert nan["level"] == "ERROR" and "NaN or inf by step" in nan["text"]
    # The failure carries the first lines of the launcher's summary (the rank, its host, the exit).
    assert failed["title"] == f"run: failed with exit status {status}" and "first failure: rank" in failed["text"]
    # W&B: rank 0's run file has the NaN; the launcher joined the same run (same id) for the failure.
    sent = {r["alert"]["title"]: run.name for run in offline_runs(run_dir) for r in wandb_records(run)
            if r["type"] == "alert"}
    assert set(sent) == {"run: non-finite loss or gradient", f"run: failed with exit status {status}"}, sent
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    assert all(name.endswith(run_id) for name in sent.values())
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "alerts/nonfinite/text_summary" in events.Tags()["tensors"], events.Tags()
    # The summary is still the console's last word.
    assert "first failure: rank" in "\n".join(result.stderr.splitlines()[-8:]), result.stderr[-2000:]


CSV_TRACKER = '''\
"""A tracker of the user's own: every logged record as a CSV row, alerts as rows of their own."""
import csv
import os

from launcher.tracking.base import NullTracker


class CsvTracker(NullTracker):
    mode = "csv"

    def __init__(self, path):
        self.handle = open(path, "a", newline="", encoding="utf-8")
        self.rows = csv.writer(self.handle)

    def log(self, record, step):
        self.rows.writerow(["log", step, record.get("loss", "")])

    def alert(self, kind, title, text, level, wait_s):
        self.rows.writerow(["alert", kind, level])

    def finish(self, exit_code=0):
        self.rows.writerow(["finish", exit_code, ""])
        self.handle.close()


def open_tracker(context):
    return CsvTracker(os.path.join(context.run_dir, "metrics.csv"))
'''


def test_a_tracker_of_ones_own_is_one_module_and_a_real_run_uses_it(tmp_path):
    """The Tracker protocol from outside the package: a CSV tracker beside the recipe, named in
    tracking.backends like `recipe:` names a module, opened by rank 0 of a real 2-process run next
    to TensorBoard."""
    import csv

    (tmp_path / "csv_tracker.py").write_text(CSV_TRACKER)
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("tracking: {mode: offline,",
                                                              "tracking: {backends: [csv_tracker.py, tensorboard],"
                                                              " mode: offline,"))
    result = launch(recipe, tmp_path / "run", nproc=2, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.reader((tmp_path / "run" / "metrics.csv").open()))
    logged = {int(step): float(loss) for kind, step, loss in rows if kind == "log" and loss}
    assert logged == {r["step"]: r["loss"] for r in metrics(tmp_path / "run") if "loss" in r}
    assert ["alert", "completion", "INFO"] in rows and rows[-1] == ["finish", "0", ""]
    assert list((tmp_path / "run" / "tensorboard").glob("events.*"))  # beside the built-in one
    assert not offline_runs(tmp_path / "run")  # W&B was not listed, so it did not run
    missing = launch(recipe, tmp_path / "other", "tracking.backends=[nowhere.py]", nproc=1)
    assert missing.returncode == 2 and "tracking.backends" in missing.stderr and "nowhere.py" in missing.stderr
