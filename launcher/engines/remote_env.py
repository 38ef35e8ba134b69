"""Which environment variables travel to other nodes: an explicit allowlist, never `env` wholesale.

ssh and pdsh start remote commands with the remote login environment; whatever the ranks need
(the interpreter's PATH, NCCL tuning, caches, the tracker's settings) must be named. Anything
else (the login shell's junk, SSH_AUTH_SOCK, HOME, DISPLAY) stays behind, so a node's job never
depends on the launching terminal. Secrets are split out: they reach the nodes through a 0600
file that the node guard reads (engines/remote.py), never argv.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from launcher.secrets import is_secret_name

FORWARDED_NAMES = frozenset({
    "PATH", "LD_LIBRARY_PATH", "LIBRARY_PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "TMPDIR", "LANG", "LC_ALL",
    "SLURM_CONF",
})
FORWARDED_PREFIXES = (
    "NCCL_", "GLOO_", "TORCH_", "TORCHELASTIC_", "CUDA_", "PYTORCH_", "PYTHON", "HF_", "TRANSFORMERS_",
    "WANDB_", "LAUNCHER_", "DS_", "ACCELERATE_", "FI_", "UCX_", "NVIDIA_", "TRITON_",
)
# Set per process by torchrun itself; a stale copy from the launching shell would be wrong.
NEVER_FORWARDED = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                             "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_ERROR_FILE", "CUDA_VISIBLE_DEVICES"})


def is_forwarded(name: str, declared: Iterable[str] = ()) -> bool:
    if name in NEVER_FORWARDED:
        return False
    return name in FORWARDED_NAMES or name.startswith(FORWARDED_PREFIXES) or name in set(declared)


def forwarded_env(environ: Mapping[str, str], declared: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secrets): the launcher's variables that remote ranks get, secrets kept apart."""
    declared = tuple(declared)
    plain: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for name in sorted(environ):
        if is_forwarded(name, declared):
            (secrets if is_secret_name(name) else plain)[name] = environ[name]
    return plain, secrets
