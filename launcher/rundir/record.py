"""What ran and how: recipe.yaml, plan.json and environment.json, secrets redacted; the tracker's
run id (tracking.json)."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

from launcher.rundir.checkpoints import text_digest
from launcher.rundir.layout import RunDir
from launcher.secrets import REDACTED, is_secret_name, redact_env

RECIPE_CHECKSUM = "recipe_xxh3_128"  # in plan.json: recipe.yaml's checksum as this launch wrote it
_TRACKED_PACKAGES = ("torch", "deepspeed", "accelerate", "transformers", "wandb", "launcher")


def write_run_dir(run: RunDir, resolved: dict, plan: dict) -> None:
    run.logs.mkdir(parents=True, exist_ok=True)
    # Rank records and agent errors describe the current job only (the failure reports read them).
    shutil.rmtree(run.rank_records, ignore_errors=True)
    shutil.rmtree(run.agent_errors, ignore_errors=True)
    shutil.rmtree(run.heartbeats, ignore_errors=True)  # the hang watch reads this job's ranks only
    shutil.rmtree(run.hang, ignore_errors=True)
    run.failure.unlink(missing_ok=True)
    run.secrets.unlink(missing_ok=True)  # a killed launcher's: the lock says no job of this run is running
    text = resolved_recipe_text(resolved)
    write_atomic(run.recipe, text)
    # The recipe's checksum beside the plan: every rank start (torchrun's restarts too) checks that
    # recipe.yaml is still what this launch planned and recorded (recipe_unchanged).
    write_atomic(run.plan, plan_json({**plan, RECIPE_CHECKSUM: text_digest(text.encode())}))
    write_atomic(run.environment, json.dumps(environment_record(), indent=2) + "\n")


def recipe_changed(run: RunDir) -> str:
    """"" when RUN_DIR/recipe.yaml is what the launcher wrote for this job; else why a rank must not
    train from it (an edit under a running job would train values run.json does not show)."""
    try:
        recorded = json.loads(run.plan.read_text(encoding="utf-8")).get(RECIPE_CHECKSUM)
        actual = text_digest(run.recipe.read_bytes())
    except (OSError, ValueError, AttributeError):
        return ""  # unreadable: loading the recipe says so, with its own error
    if recorded is None or recorded == actual:
        return ""
    return (f"{run.recipe} was changed after this job was launched (its checksum is not the one in {run.plan}): "
            "the ranks would train values that run.json and the tracker do not show\n      HINT: restore it, or "
            "edit the recipe file you launched and run `launcher run` again (a change of the experiment is "
            "refused there, a schedule change recorded with --allow-schedule-change)")


def plan_json(data: dict) -> str:
    """A plan (or {"recipe", "plan"}) as JSON: indented for people when it is small; compact (json's
    C encoder, about 10x faster than its indenting one) for thousands of nodes, read with a tool."""
    plan = data.get("plan", data)
    if len(plan["nodes"]) <= 64:
        return json.dumps(data, indent=2) + "\n"
    # Thousands of nodes share one argv and a few environments (LaunchPlan.to_dict hands out one
    # object each): encode each once, and splice the node list in where a marker stands (a string
    # no recipe or plan can hold).
    encode = json.JSONEncoder().encode
    tails: dict[tuple[int, int], str] = {}

    def tail(node: dict) -> str:
        # The objects live in `data` until we return, so their ids stay unique.
        key = (id(node["argv"]), id(node["env"]))
        text = tails.get(key)
        if text is None:
            text = tails[key] = f', "argv": {encode(node["argv"])}, "env": {encode(node["env"])}}}'
        return text

    # Validated host names need no escaping (one match over all of them); anything else is encoded.
    plain = _PLAIN_HOST.fullmatch("".join(n["host"] for n in plan["nodes"])) is not None
    quote = (lambda host: f'"{host}"') if plain else encode
    marker = f"\0nodes-{os.urandom(8).hex()}\0"
    skeleton = {**plan, "nodes": marker}
    before, after = encode({**data, "plan": skeleton} if "plan" in data else skeleton).split(encode(marker), 1)
    # Megabytes of text: one join of small pieces copies them once (node strings, a joined list and
    # a final concatenation would copy them three more times).
    pieces = [before, "["]
    for index, node in enumerate(plan["nodes"]):
        pieces += (", " if index else "", f'{{"host": {quote(node["host"])}', tail(node))
    pieces += ("]", after, "\n")
    return "".join(pieces)


_PLAIN_HOST = re.compile(r"[A-Za-z0-9_.-]+")


def environment_record() -> dict:
    from importlib import metadata  # 16 ms of imports that `launcher plan` never needs

    versions = {}
    for package in _TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": redact_argv(sys.argv),
        "cwd": os.getcwd(),
        "git_sha": git_sha(),
        "packages": versions,
        "env": redact_env(dict(os.environ)),
    }


def redact_argv(argv: list[str]) -> list[str]:
    """Overrides carry secrets too: `cluster.env.HF_TOKEN=abc`, and `cluster.env={API_KEY: abc}`."""
    return [redact_override(arg) for arg in argv]


def redact_override(arg: str) -> str:
    key, sep, value = arg.partition("=")
    if not sep:
        return arg
    if is_secret_name(key.rsplit(".", 1)[-1]):
        return f"{key}={REDACTED}"
    if not value.lstrip().startswith(("{", "[")) and ":" not in value:
        return arg  # a scalar: it has no keys of its own
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return arg if ":" not in value else f"{key}={REDACTED}"  # unparsable with keys in it: say nothing
    if not isinstance(parsed, (dict, list)):
        return arg
    cleaned = redact_nested(parsed)
    if cleaned == parsed:
        return arg
    return f"{key}={yaml.safe_dump(cleaned, default_flow_style=True, width=10**6).strip()}"


def redact_nested(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: REDACTED if isinstance(k, str) and is_secret_name(k) else redact_nested(v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [redact_nested(v) for v in data]
    return data


def git_sha() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def resolved_recipe_text(resolved: dict) -> str:
    """recipe.yaml as the launcher writes it: what every worker reads."""
    import yaml

    return yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)


def await_run_dir(run_dir: str, resolved: dict, timeout_s: float, poll_s: float = 0.5) -> tuple[str, str] | None:
    """Wait until node 0's launcher has written the run directory with this same recipe (nodes
    started one by one); (what is wrong, the fix) when it has not in time, or wrote another recipe."""
    import time

    run = RunDir(run_dir)
    wanted = resolved_recipe_text(resolved)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if run.plan.is_file() and run.recipe.is_file() and run.tracking.is_file():
            if run.recipe.read_text(encoding="utf-8") == wanted:
                return None
            return (f"node 0 runs {run.recipe} with another recipe than this node's",
                    "start every node with the same recipe and overrides (only --node-rank differs)")
        time.sleep(poll_s)
    return (f"node 0 did not write {run.root} within cluster.rdzv_timeout={timeout_s:g}s",
            "start node 0 (--node-rank 0) with the same run directory, on a file system every node shares")


def tracker_run_id(run: RunDir) -> str:
    """The tracker run id of this run directory (tracking.json), made on first use: by the launcher
    before any rank starts, so that every rank and every later job of the run share it."""
    import secrets

    path = run.tracking
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))["run_id"]
    run_id = secrets.token_hex(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id}) + "\n", encoding="utf-8")
    return run_id


def write_atomic(path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
