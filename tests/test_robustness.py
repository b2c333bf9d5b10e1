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
from conftest import FAST, cli_env, errors, run_in_folders, search_runs

SYNTH = ["model=fcl", "data=synthetic", "model.hidden=[16]"]


FM_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> dict:
    """Six faulty commands, each in a folder of its own with an existing store, run at once (they share
    nothing): name -> (folder, completed process)."""
    import argparse

    import torch

    root = tmp_path_factory.mktemp("faults")
    fm = root / "corrupt" / "fm"
    fm.mkdir(parents=True)
    for name in FM_FILES:
        (fm / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(10)))
    (fm / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    (root / "unsafe").mkdir()
    foreign = root / "unsafe" / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=1.0)}, foreign)  # pickles a class
    quiet = ["trainer.enable_progress_bar=false", *FAST[1:]]
    commands = {  # one thread each: six processes share the cores
        "nan": ["train", *SYNTH, "threads=1", "optim.lr=1e30", "trainer.max_epochs=3", *quiet],
        "corrupt": [
            "train",
            "threads=1",
            "model=fcl",
            "data=fashion_mnist",
            f"data.root={fm}",
            "data.download=false",
            *FAST,
        ],
        "sweep": ["train", "-m", *SYNTH, "threads=1", "optim.lr=1e-3,1e30", "trainer.max_epochs=2", *quiet],
        "unsafe": ["train", *SYNTH, "threads=1", f"ckpt_path={foreign}", *FAST],
        "no_ckpt": ["train", *SYNTH, "threads=1", "ckpt_path=last", *FAST],
        "optimizer": ["train", *SYNTH, "threads=1", "optim._target_=torch.optim.RMSprop", *FAST],  # no `fused`
    }
    return run_in_folders(root, commands, store_template)


@pytest.mark.slow
def test_nan_loss_stops_the_run_failed_with_step_and_keeps_the_checkpoint(faults):
    folder, proc = faults["nan"]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = errors(proc.stderr)
    assert "training loss became" in line and "at step" in line
    run = search_runs(folder).iloc[0]
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


def test_corrupt_data_file_names_the_file(faults):
    folder, proc = faults["corrupt"]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = errors(proc.stderr)
    assert "train-images-idx3-ubyte.gz" in line
    assert search_runs(folder).iloc[0].status == "FAILED"


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_is_named(faults):
    folder, proc = faults["sweep"]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "1 of 2 job(s) FAILED" in proc.stderr and "job #1 [" in proc.stderr and "optim.lr=1e+30" in proc.stderr
    runs = search_runs(folder)
    assert sorted(runs.status) == ["FAILED", "FINISHED"]


def test_a_checkpoint_that_is_not_weights_only_is_refused_as_unsafe(faults):
    folder, proc = faults["unsafe"]
    path = folder / "foreign.ckpt"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr
    (line,) = errors(proc.stderr)
    assert line.startswith(f"ssmoe: error: checkpoint {path} refused as unsafe") and "argparse.Namespace" in line
    assert search_runs(folder).empty  # refused before any run was started or resumed


def test_ckpt_path_last_without_a_checkpoint_is_one_line(faults):
    _, proc = faults["no_ckpt"]
    assert proc.returncode == 2
    (line,) = errors(proc.stderr)
    assert "ckpt_path=last: no unfinished run of this config" in line


@pytest.mark.slow
def test_four_parallel_jobs_on_one_sqlite_store_lose_no_run(run_cli, tmp_path):
    run_cli(
        "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "threads=1", *SYNTH, "seed=0,1,2,3", *FAST
    )
    runs = search_runs(tmp_path)
    assert len(runs) == 4 and set(runs.status) == {"FINISHED"} and set(runs["params.seed"]) == {"0", "1", "2", "3"}


def journal_records(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_server_lost_mid_run_training_finishes_and_sync_relogs(tmp_path, mlflow_server, run_cli):
    """The server dies after the first epoch was logged: training goes on to the end, the rest is kept
    in the run's offline journal, the warning names `ssmoe sync`, and that re-logs it all once the
    server is back."""
    import mlflow

    epochs = 25  # ~0.1 s each: seconds of training left after epoch 1 for the test to pause it there
    cmd = [sys.executable, "-m", "ssmoe_cli", "train", *SYNTH, "logger=mlflow_server", *FAST[1:]]
    cmd += [f"logger.tracking_uri={mlflow_server.url}", f"trainer.max_epochs={epochs}"]
    # One retry (of urllib3's, before the run goes offline) instead of the default three, whose back-off
    # sleeps (0 + 2 + 4 s) only make the test wait.
    cmd += ["trainer.enable_progress_bar=false", "logger.http_retries=1"]
    client = mlflow.MlflowClient(mlflow_server.url)

    def first_epoch_logged() -> str | None:
        exp = client.get_experiment_by_name("ssmoe")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return runs[0].info.run_id if runs and "val/acc" in runs[0].data.metrics else None

    out_file, err_file = tmp_path / "stdout", tmp_path / "stderr"  # files: a full pipe would block it
    with out_file.open("w") as out, err_file.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(tmp_path), stdout=out, stderr=err, text=True)
        deadline = time.time() + 120
        while (run_id := first_epoch_logged()) is None:
            assert proc.poll() is None and time.time() < deadline, err_file.read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGSTOP)  # pause training there, kill the server, go on
        mlflow_server.stop()
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=300)
    out, err = out_file.read_text(), err_file.read_text()

    assert proc.returncode == 0 and "Traceback" not in err, out + err
    (warning,) = [line for line in err.splitlines() if line.startswith("ssmoe: warning:")]
    (run_dir,) = tmp_path.glob("logs/train/runs/*")
    assert "lost the MLflow server" in warning and f"ssmoe sync {run_dir}" in warning
    records = journal_records(run_dir / "mlflow_offline.jsonl")
    assert records[0]["op"] == "header" and records[0]["run_id"] == run_id
    assert records[-1] == {"op": "end", "status": "FINISHED"}
    assert any("test/acc" in r.get("metrics", {}) for r in records)

    mlflow_server.start()  # back, same store: nothing after the first epoch is there yet
    assert client.get_run(run_id).info.status == "RUNNING"
    proc = run_cli("sync", str(run_dir))
    assert f"into MLflow run {run_id}" in proc.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["test/acc"] <= 1
    assert len(client.get_metric_history(run_id, "val/acc")) == epochs  # every epoch, before and after
    assert "layers.csv" in {a.path for a in client.list_artifacts(run_id)}
    assert (run_dir / "mlflow_offline.synced.jsonl").is_file()

    again = run_cli("sync", str(run_dir), check=False)  # never replayed twice
    assert again.returncode == 2 and errors(again.stderr) == [
        f"ssmoe: error: {run_dir}: already re-logged; nothing to sync"
    ]


@pytest.mark.slow
def test_server_back_before_the_end_is_relogged_automatically(tmp_path, mlflow_server, capsys):
    from ssmoe_cli.tracking import MlflowTracker

    tracker = MlflowTracker(mlflow_server.url, offline_dir=tmp_path / "out", http_retries=0)
    tracker.start({"model": {"k": 2}}, {"run_type": "train"})
    tracker.log_metrics({"val/acc": 0.5}, step=1)
    mlflow_server.stop()
    tracker.log_metrics({"val/acc": 0.75}, step=2)  # refused: goes to the journal
    tracker.set_tags({"note": "offline"})
    assert tracker.journal == tmp_path / "out" / "mlflow_offline.jsonl" and tracker.journal_records == 2
    mlflow_server.start()
    tracker.end("FINISHED")
    assert tracker.resynced and "were re-logged into run" in tracker.offline_note()
    import mlflow

    client = mlflow.MlflowClient(mlflow_server.url)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["note"] == "offline"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "val/acc")] == [0.5, 0.75]


def test_sync_without_a_journal_is_one_line(run_cli, tmp_path):
    proc = run_cli("sync", str(tmp_path), check=False)
    assert proc.returncode == 2 and errors(proc.stderr) == [
        f"ssmoe: error: {tmp_path}: no mlflow_offline.jsonl (nothing was kept offline); nothing to sync"
    ]


def test_an_optimizer_that_refuses_a_key_is_one_line_before_any_run(faults):
    folder, proc = faults["optimizer"]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert errors(proc.stderr) == [
        "ssmoe: error: optim._target_=torch.optim.RMSprop cannot be built from the optim keys: "
        "RMSprop.__init__() got an unexpected keyword argument 'fused' (remove a key it does not take with "
        "~optim.<key>, e.g. ~optim.fused)"
    ]
    assert search_runs(folder).empty  # refused before the MLflow run was started
