"""SIGTERM, as schedulers send it, through the real CLI: a clean stop in every phase (ssmoe_cli.signals)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import FAST, errors, search_runs, start_train, wait_for

SYNTH = ["model=fcl", "data=synthetic", "model.hidden=[16]"]


def test_sigterm_stops_a_sweep_which_names_its_stopped_jobs(tmp_path, mlflow_db):
    """The running job ends KILLED and hands in its outcome (what submitit needs from a SLURM job);
    the sweep's later jobs do not start, and its summary names them all."""
    args = ["-m", *SYNTH, "seed=0,1", "trainer.max_epochs=50", "trainer.enable_progress_bar=false", *FAST[1:]]
    proc, err = start_train(tmp_path, *args)
    wait_for(proc, lambda: list(tmp_path.glob("logs/train/multiruns/*/0/checkpoints/last.ckpt")), "a checkpoint")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    stderr = err.read_text()
    assert "Traceback" not in stderr and "2 of 2 job(s) FAILED" in stderr, stderr
    named = {line.split("[")[0].strip(): line for line in stderr.splitlines() if line.startswith("  job #")}
    assert "seed=0" in named["job #0"]
    assert "]: terminated by SIGTERM during training; the MLflow run is KILLED" in named["job #0"]
    assert "seed=1" in named["job #1"] and named["job #1"].endswith("]: terminated by SIGTERM before this job started")
    runs = search_runs(tmp_path)
    assert len(runs) == 1 and runs.iloc[0].status == "KILLED"  # job #1 started no run


def test_sigterm_before_training_ends_the_run_killed(tmp_path, mlflow_db):
    """During the t-SNE gate's pretraining (model.prepare, before Lightning runs): no longer left RUNNING."""
    args = ["model=ptsne_moe", "data=synthetic", "model.num_experts=4", "model.expert_hidden=[16]"]
    args += ["gating.pretrain_epochs=100000", "gating.tsne_batch_size=200", *FAST]
    proc, err = start_train(tmp_path, *args)
    wait_for(
        proc,
        lambda: any("preparing the model" in log.read_text() for log in tmp_path.glob("logs/train/runs/*/train.log")),
        "the model's preparation",
    )
    start = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143 and time.time() - start < 30
    stderr = err.read_text()
    assert "Traceback" not in stderr
    assert errors(stderr) == [
        "ssmoe: error: terminated by SIGTERM while preparing the model; the MLflow run is KILLED "
        "(no checkpoint yet: run it again)"
    ]
    run = search_runs(tmp_path).iloc[0]
    assert run.status == "KILLED" and run["tags.error"] == "terminated by SIGTERM while preparing the model"


def test_a_sigterm_while_the_job_closes_its_run_is_recorded_not_raised():
    """The cleanup after any exit (submitit's SystemExit, a failure) must finish, or the run stays RUNNING."""
    from ssmoe_cli import signals

    with signals.sigterm_ends_job(), pytest.raises(signals.Terminated):  # before: the signal raises at once
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    with pytest.raises(signals.Terminated, match="before this job started"), signals.sigterm_ends_job():
        pass  # a sweep's next job in this process stops before it starts
    signals._state.stopped = False  # this test process goes on with other tests
    with signals.sigterm_ends_job():
        signals.ending()
        os.kill(os.getpid(), signal.SIGTERM)  # while closing: recorded only
        time.sleep(0.2)
        assert signals.received()
    signals._state.stopped = False


def test_ctrl_c_before_training_is_one_line_not_a_traceback(tmp_path):
    proc, err = start_train(tmp_path, *SYNTH, *FAST)
    # Hydra has composed the config and made the run's folder: past Python's start-up (a signal there
    # cannot be caught by any code of ours), still importing torch and Lightning, before training.
    wait_for(proc, lambda: list(tmp_path.glob("logs/train/runs/*")), "the run's folder", timeout=60)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    stderr = err.read_text()
    assert "Traceback" not in stderr and "ssmoe: interrupted (Ctrl-C)" in stderr, stderr
