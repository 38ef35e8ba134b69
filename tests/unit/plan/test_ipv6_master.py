"""--master-addr with an IPv6 address (issue 32: `[::1]` was read as a YAML list and refused)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import ROOT, launcher_env


@pytest.mark.parametrize("given", ["[::1]", "::1", "fd00::2"])
def test_an_ipv6_rendezvous_address_is_taken_as_given_and_bracketed_in_the_endpoint(tmp_path, given):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    done = subprocess.run(["launcher", "plan", "mlp-tiny", "--hostfile", str(hostfile), "--master-addr", given,
                           "--json"], cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["recipe"]["cluster"]["master_addr"] == given
    bare = given.strip("[]")
    assert data["plan"]["rendezvous"].startswith(f"c10d://[{bare}]:")
    assert any(f"--rdzv-endpoint=[{bare}]:" in arg for node in data["plan"]["nodes"] for arg in node["argv"])
