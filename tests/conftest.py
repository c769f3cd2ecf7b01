"""Shared fixtures: fixed seeds, and a helper to run the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")  # headless: the tests choose the backend, the library never does

ROOT = Path(__file__).resolve().parents[1]
FAST = ["train.threads=1", "train.log_every=5"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def one_thread():  # noqa: ANN201
    """Tiny kernels: one thread avoids OpenMP oversubscription when other jobs share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cli(
    *args: str, check: bool = True, timeout: float = 600, cwd: Path = ROOT, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``lddyn ARGS`` as a user would, in a subprocess; returns the completed process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "lddyn.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lddyn {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def overrides(*pairs: str) -> list[str]:
    out = []
    for p in [*FAST, *pairs]:
        out += ["--set", p]
    return out
