"""Faults through the real CLI: each gives one line, the right exit code, and the MLflow state it must."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, cli_env, search_runs

SYNTH = ["model=fcl", "data=synthetic", "model.hidden=[16]"]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ssmoe: error:")]


@pytest.mark.slow
def test_nan_loss_stops_the_run_failed_with_step_and_keeps_the_checkpoint(run_cli, tmp_path):
    proc = run_cli(
        "train",
        *SYNTH,
        "optim.lr=1e30",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        *FAST[1:],
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = errors(proc.stderr)
    assert "training loss became" in line and "at step" in line
    run = search_runs(tmp_path).iloc[0]
    assert run.status == "FAILED" and "training loss became" in run["tags.error"]
    assert int(run["tags.failed_step"]) >= 0


def test_unreachable_tracking_server_fails_fast_before_training(run_cli, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    start = time.time()
    proc = run_cli(
        "train", *SYNTH, "logger=mlflow_server", f"logger.tracking_uri=http://127.0.0.1:{port}", *FAST, check=False
    )
    assert proc.returncode == 2 and time.time() - start < 60
    (line,) = errors(proc.stderr)
    assert f"127.0.0.1:{port} is unreachable" in line and "logger=mlflow" in line
    assert not list(tmp_path.glob("logs/train/runs/*/checkpoints"))  # nothing trained


def test_corrupt_data_file_names_the_file(run_cli, tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (root / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(10)))
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    proc = run_cli(
        "train", "model=fcl", "data=fashion_mnist", f"data.root={root}", "data.download=false", *FAST, check=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = errors(proc.stderr)
    assert "train-images-idx3-ubyte.gz" in line
    assert search_runs(tmp_path).iloc[0].status == "FAILED"


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_is_named(run_cli, tmp_path):
    proc = run_cli(
        "train",
        "-m",
        *SYNTH,
        "optim.lr=1e-3,1e30",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        *FAST[1:],
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "1 of 2 job(s) FAILED" in proc.stderr and "job #1 [" in proc.stderr and "optim.lr=1e+30" in proc.stderr
    runs = search_runs(tmp_path)
    assert sorted(runs.status) == ["FAILED", "FINISHED"]


@pytest.mark.slow
def test_four_parallel_jobs_on_one_sqlite_store_lose_no_run(run_cli, tmp_path):
    run_cli(
        "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "threads=1", *SYNTH, "seed=0,1,2,3", *FAST
    )
    runs = search_runs(tmp_path)
    assert len(runs) == 4 and set(runs.status) == {"FINISHED"} and set(runs["params.seed"]) == {"0", "1", "2", "3"}


def _final_acc(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if "test accuracy" in line)


@pytest.mark.slow
def test_killed_run_resumes_into_the_same_run_and_reaches_the_same_result(run_cli, tmp_path):
    # sgmoe: its gate draws noise in training, so the RNG state must be restored too.
    args = [
        "train",
        "model=sgmoe",
        "data=synthetic",
        "data.n_train=40000",
        "data.batch_size=32",
        "model.num_experts=4",
        "model.expert_hidden=[16]",
        "trainer.max_epochs=6",
        "threads=1",
        "trainer.enable_progress_bar=false",
        "timing.repeats_b1=5",
        "timing.repeats_b256=3",
    ]
    reference = tmp_path / "reference"
    reference.mkdir()
    env = cli_env(reference)
    ref = subprocess.run(
        [sys.executable, "-m", "ssmoe_cli", *args], cwd=reference, env=env, capture_output=True, text=True, timeout=600
    )
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "ssmoe_cli", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    ckpt: list[Path] = []
    while not ckpt and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        ckpt = list(tmp_path.glob("logs/train/runs/*/checkpoints/last.ckpt"))
    assert ckpt and proc.poll() is None, "the run ended before it could be killed mid-training"
    time.sleep(0.3)  # into the next epoch (one takes about a second)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert search_runs(tmp_path).iloc[0].status == "RUNNING"  # killed: nobody could close it

    resumed = run_cli(*args, "ckpt_path=last")
    runs = search_runs(tmp_path)
    assert len(runs) == 1 and runs.iloc[0].status == "FINISHED" and runs.iloc[0]["tags.resumed"] == "true"
    assert _final_acc(resumed.stdout) == _final_acc(ref.stdout)


def test_ckpt_path_last_without_a_checkpoint_is_one_line(run_cli):
    proc = run_cli("train", *SYNTH, "ckpt_path=last", *FAST, check=False)
    assert proc.returncode == 2
    (line,) = errors(proc.stderr)
    assert "ckpt_path=last: no unfinished run of this config" in line
