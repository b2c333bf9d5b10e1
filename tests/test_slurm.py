"""`hydra/launcher=slurm` runs real SLURM jobs: a single-node cluster (tests/slurm_cluster.py) started for
this module, sweeps submitted through hydra-submitit-launcher exactly as a user would, MLflow read back."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import FAST, cli_env, search_runs
from slurm_cluster import REQUIRE_ENV, ClusterUnavailable, SlurmCluster

TINY = ["model=fcl", "data=digits", *FAST]
T = TypeVar("T")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """munged + slurmctld + slurmd on 127.0.0.1 until the module's tests are done."""
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"the SLURM test cluster did not start ({REQUIRE_ENV}=1): {exc}")
        pytest.skip(f"the SLURM test cluster cannot start here: {exc}")
    atexit.register(cluster.stop)  # also when the session ends without running fixture teardowns
    yield cluster
    cluster.stop()


def ssmoe(cluster: SlurmCluster, cwd: Path, *args: str) -> subprocess.Popen:
    """`ssmoe ARGS` started in cwd, talking to the test cluster (the launcher blocks until its jobs end)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ssmoe_cli", *args],
        cwd=cwd,
        env={**cli_env(cwd), "SLURM_CONF": str(cluster.conf)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(cluster: SlurmCluster, proc: subprocess.Popen, timeout: float = 180, hint: str = "") -> tuple[int, str, str]:
    """Wait for the launcher; on a timeout say what the queue holds (a job can pend for ever)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        queue = cluster.run("squeue", "-o", "%i %T %r", check=False).stdout
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"ssmoe did not end within {timeout:.0f} s{hint}; queue:\n{queue}\n{out}\n{err[-3000:]}")
    return proc.returncode, out, err


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 180) -> T:
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return found


@pytest.mark.slow
def test_sweep_runs_each_job_as_a_slurm_job(slurm: SlurmCluster, tmp_path: Path):
    # One CPU each, so that both jobs of the array run at once on a small node.
    sweep = ["train", "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "seed=0,1", *TINY]
    code, out, err = finish(slurm, ssmoe(slurm, tmp_path, *sweep))
    assert code == 0, f"{out}\n{err}"
    assert "sweep finished: 2 job(s), none failed" in out
    # Both jobs logged into the store of the directory the sweep was started from: SLURM runs a job in
    # its submitter's working directory, so the default sqlite:///mlflow.db is one file for all.
    runs = search_runs(tmp_path)
    assert sorted(runs["params.seed"]) == ["0", "1"]
    assert set(runs["status"]) == {"FINISHED"}
    # Each job's torch used the one CPU SLURM gave it (the launcher's setup line), not every core.
    assert set(runs["params.threads"]) == {"1"}
    # They ran as SLURM jobs (one array of two), in that directory, with the launcher's own python.
    jobs = [r for r in slurm.job_records() if r.get("WorkDir") == str(tmp_path)]
    assert [r["JobState"] for r in jobs] == ["COMPLETED", "COMPLETED"], jobs
    scripts = list(tmp_path.glob("logs/train/multiruns/*/.submitit/*/*submission.sh"))
    assert scripts and all(sys.executable in s.read_text() for s in scripts)

