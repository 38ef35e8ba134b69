"""Shared helpers live in tests/helpers.py (write_recipe, TINY_RECIPE, launch, metrics).

Parallel runs (pyproject's `-n auto`): each test's launches are separate process trees with their
own run directories and free ports, so two workers never share a job."""

from __future__ import annotations

import os

import pytest

MAX_WORKERS = 8  # each worker's tests start 2-8 ranks of their own


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """One worker per core (on 2 cores the default set kept 1.71 of them busy on 2026-12-03), none
    when the cluster tests are selected: their network namespaces, Slurm and sshd daemons exist
    once per machine."""
    selected = config.getoption("markexpr") or ""
    if "cluster" in selected.replace("not cluster", ""):
        return 0
    return min(os.cpu_count() or 1, MAX_WORKERS)
