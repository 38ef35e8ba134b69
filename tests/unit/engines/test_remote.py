"""The hostfile engines' remote side: what travels to other nodes, quoting, secret names."""

import subprocess
import sys

from launcher.engines.commands import NodeCommand
from launcher.engines.remote import remote_command
from launcher.engines.remote_env import forwarded_env


def test_env_allowlist_splits_secrets():
    environ = {"PATH": "/v/bin", "NCCL_IB_HCA": "mlx5", "HOME": "/root", "SSH_AUTH_SOCK": "/s", "RANK": "3",
               "WANDB_API_KEY": "k", "HF_TOKEN": "t", "MY_VAR": "1", "PYTHONPATH": "/p"}
    plain, secrets = forwarded_env(environ, ["MY_VAR"])
    assert plain == {"MY_VAR": "1", "NCCL_IB_HCA": "mlx5", "PATH": "/v/bin", "PYTHONPATH": "/p"}
    assert secrets == {"HF_TOKEN": "t", "WANDB_API_KEY": "k"}


HOSTILE_VALUES = ["$(touch {s})", "`touch {s}`", "'; touch {s}; '", "\"; touch {s}; \"", "a\ntouch {s}",
                  "$HOME;touch {s}", "x' \"y\" $(touch {s})"]


def test_hostile_env_values_and_paths_never_execute(tmp_path):
    """docs/faults.md 15: the remote command string is run by a real shell; nothing in it may execute."""
    sentinel = tmp_path / "sentinel"
    odd_dir = tmp_path / "dir with 'quotes' and\nnewline"
    odd_dir.mkdir()
    env = {f"V{i}": value.format(s=sentinel) for i, value in enumerate(HOSTILE_VALUES)}
    printer = [sys.executable, "-c", "import os, json; print(json.dumps({k: os.environ[k] for k in os.environ "
               "if k.startswith('V')}))", "$(touch " + str(sentinel) + ")"]
    command = remote_command(NodeCommand("h", tuple(printer), env), str(odd_dir))
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    import json

    assert json.loads(done.stdout) == env  # every value arrived byte for byte
    assert not sentinel.exists()


def test_secret_names_are_whole_words_not_prefixes():
    from launcher.secrets import is_secret_name, redact_env

    for name in ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "GH_APIKEY", "wandb_api_key",
                 "MY_ACCESS_TOKENS"):
        assert is_secret_name(name), name
    for name in ("TOKENIZERS_PARALLELISM", "KEYBOARD_LAYOUT", "PATH", "NCCL_IB_HCA", "OMP_NUM_THREADS"):
        assert not is_secret_name(name), name
    assert redact_env({"HF_TOKEN": "hf_x", "TOKENIZERS_PARALLELISM": "false"}) == {
        "HF_TOKEN": "<redacted>", "TOKENIZERS_PARALLELISM": "false"}


def _probe(master: str, port: int) -> dict:
    """The pre-flight check as each host runs it (here, on this machine, without ssh)."""
    import json
    import subprocess
    import sys

    from launcher.engines.remote import _CHECK

    done = subprocess.run([sys.executable, "-c", _CHECK, "0", master, str(port), "1"], capture_output=True,
                          text=True, timeout=30, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_preflight_counts_a_refused_connection_as_a_reachable_rendezvous_host():
    from launcher.plan.launch import first_free_port

    port = first_free_port(29900)  # nothing listens there: the host answers with a refusal
    assert "unreachable" not in _probe("127.0.0.1", port)


def test_preflight_names_a_rendezvous_host_that_does_not_resolve():
    # A cut route is tested on the namespace cluster (tests/cluster): it needs a network of its own.
    assert "cannot resolve no-such-host.invalid" in _probe("no-such-host.invalid", 29500)["unreachable"]
