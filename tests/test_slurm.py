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
# Under pytest-xdist (make test) both tests run on one worker, so that one cluster serves them (two
# clusters at once would each offer every CPU of the machine and register the same node name).
pytestmark = pytest.mark.xdist_group("slurm")
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
        env={**cli_env(cwd), "SLURM_CONF": str(cluster.conf), "PATH": cluster.env["PATH"]},
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


def wait_for(
    what: str, probe: Callable[[], T | None], launcher: subprocess.Popen | None = None, timeout: float = 180
) -> T:
    """Poll until probe() gives something; fail at the timeout, or at once if the launcher has exited."""
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        if launcher is not None and launcher.poll() is not None:
            out, err = launcher.communicate()
            pytest.fail(f"ssmoe exited ({launcher.returncode}) while waiting for {what}\n{out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return found


@pytest.mark.slow
def test_sweep_runs_each_job_as_a_slurm_job(slurm: SlurmCluster, tmp_path: Path, mlflow_db: Path):
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
    # (The launcher returns once both results are in; the jobs' processes may still be exiting.)
    wait_for("the jobs to leave the queue", lambda: None if slurm.queue() else True, timeout=60)
    jobs = [r for r in slurm.job_records() if r.get("WorkDir") == str(tmp_path)]
    assert [r["JobState"] for r in jobs] == ["COMPLETED", "COMPLETED"], jobs
    scripts = list(tmp_path.glob("logs/train/multiruns/*/.submitit/*/*submission.sh"))
    assert scripts and all(sys.executable in s.read_text() for s in scripts)


@pytest.mark.slow
def test_scancel_mid_training_ends_killed_with_a_checkpoint_and_resumes(
    slurm: SlurmCluster, tmp_path: Path, mlflow_db: Path
):
    # Enough epochs that the job is still training when scancel arrives after the first checkpoint.
    epochs = 15
    args = ["train", "-m", "hydra/launcher=slurm", "seed=0", f"trainer.max_epochs={epochs}", *TINY]
    launcher = ssmoe(slurm, tmp_path, *args)
    ckpt = wait_for(
        "the job's first checkpoint",
        lambda: next(iter(tmp_path.glob("logs/train/multiruns/*/0/checkpoints/last.ckpt")), None),
        launcher,
    )
    (job_id,) = wait_for("the job in the queue", lambda: slurm.queue() or None, launcher)
    slurm.run("scancel", job_id)  # SIGTERM now, SIGKILL after KillWait
    wait_for("the cancelled job to leave the queue", lambda: None if slurm.queue() else True, timeout=60)
    try:  # the sweep's own outcome is checked last, so that a hang does not hide the rest
        ended: tuple[int, str, str] | None = (launcher.wait(timeout=60), *launcher.communicate())
    except subprocess.TimeoutExpired:
        launcher.kill()
        ended = None

    (record,) = [r for r in slurm.job_records() if r.get("WorkDir") == str(tmp_path)]
    assert record["JobState"] == "CANCELLED", record
    run = search_runs(tmp_path).iloc[0]
    assert run["status"] == "KILLED" and "SIGTERM" in run["tags.error"], run.filter(like="tags.").to_dict()
    assert ckpt.is_file()
    # The job said so in one line, in its SLURM stderr file.
    job_err = next(tmp_path.glob(f"logs/train/multiruns/*/.submitit/{job_id}/{job_id}_0_log.err")).read_text()
    said = [line for line in job_err.splitlines() if line.startswith("ssmoe:")]
    assert len(said) == 1 and "SIGTERM" in said[0] and "ckpt_path=last" in said[0], job_err[-3000:]

    # The same sweep with ckpt_path=last continues that run from its checkpoint, in a new SLURM job.
    code, out, err = finish(slurm, ssmoe(slurm, tmp_path, *args, "ckpt_path=last"))
    assert code == 0, f"{out}\n{err[-3000:]}"
    runs = search_runs(tmp_path)
    assert list(runs["run_id"]) == [run["run_id"]] and runs["status"][0] == "FINISHED"
    import mlflow

    losses = mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss")
    assert sorted(m.step for m in losses) == sorted({m.step for m in losses}) and len(losses) == epochs

    # The first sweep ended on its own and named the stopped job. submitit learns how a job ended from
    # the result file the job writes, else from `sacct`, which a cluster without accounting (this one)
    # cannot answer: a job stopped by SIGTERM must still hand in its outcome.
    assert ended is not None, "the sweep still waited 60 s after its job was cancelled: the job handed in no result"
    code, out, err = ended
    assert code == 1 and "job #0" in err and "SIGTERM" in err, f"{out}\n{err[-3000:]}"
