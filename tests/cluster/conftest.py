"""A real cluster for these tests: Slurm controller + daemons and sshd in network namespaces.

Started once per test session with tests/cluster/cluster.sh (root, Debian packages slurmctld,
slurmd, slurm-client, munge, openssh-server, pdsh: `.ci/run` installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import launcher_env

SCRIPT = Path(__file__).with_name("cluster.sh")
NODES = 2
NEEDED = ("slurmctld", "slurmd", "sbatch", "munged", "sshd", "pdsh", "nsenter")


@dataclass
class Cluster:
    base: Path
    nodes: int

    def env(self, **extra: str) -> dict[str, str]:
        values = dict(line.split("=", 1) for line in (self.base / "env").read_text().split())
        env = launcher_env(SLURM_CONF=values["SLURM_CONF"], **extra)
        env["PATH"] = values["PATH_PREFIX"] + os.pathsep + env["PATH"]
        return env

    @property
    def subnet(self) -> str:
        """The nodes' /24 (cluster.sh's NET): node K is SUBNET.K, this machine SUBNET.254."""
        return next(line.split("=", 1)[1].strip() for line in SCRIPT.read_text().splitlines()
                    if line.startswith("NET="))

    def hostfile(self, path: Path, slots: int = 1) -> Path:
        path.write_text("".join(f"host{k} slots={slots}\n" for k in range(1, self.nodes + 1)))
        return path

    def on(self, node: int, argv: list[str], **popen) -> subprocess.Popen:
        """Start argv on node `node` (1-based) as that machine would: its namespace and hostname."""
        return subprocess.Popen(["bash", str(SCRIPT), "on", str(self.nodes), str(self.base), str(node), *argv],
                                env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)

    def slurm(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(list(argv), env=self.env(), capture_output=True, text=True, timeout=60)
        if check and done.returncode:
            raise AssertionError(f"{argv}: {done.stderr}")
        return done.stdout


@pytest.fixture(scope="session")
def cluster():
    missing = [tool for tool in NEEDED if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")]
    assert not missing, f"install {missing} (see .ci/run: apt-get install slurmctld slurmd ... pdsh)"
    assert os.geteuid() == 0, "the cluster tests need root (network namespaces, daemons)"
    # Not under pytest's tmp dirs: munged wants every parent of its socket to be world-searchable.
    base = Path("/tmp/launcher-test-cluster")
    base.mkdir(mode=0o755, exist_ok=True)
    subprocess.run(["bash", str(SCRIPT), "down", str(NODES), str(base)], capture_output=True, check=False)
    up = subprocess.run(["bash", str(SCRIPT), "up", str(NODES), str(base)], capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    yield Cluster(base, NODES)
    subprocess.run(["bash", str(SCRIPT), "down", str(NODES), str(base)], capture_output=True, check=False)
