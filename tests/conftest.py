"""Shared fixtures: run the real `ssmoe` CLI in a subprocess inside a temp dir, read MLflow back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Small, fast settings for CLI runs: a few steps, no progress bar.
FAST = ["trainer=debug", "timing.repeats_b1=5", "timing.repeats_b256=3"]


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to other processes busy on the machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # never touch the user's cache
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run `python -m ssmoe_cli ARGS` with the temp dir as working directory."""

    def run(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "ssmoe_cli", *args],
            cwd=tmp_path,
            env=cli_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ssmoe {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def search_runs(tmp_path: Path, experiment: str = "ssmoe"):
    """All runs of an experiment in the temp dir's default store, as a DataFrame."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time ASC"])
