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


def test_runs_started_together_get_their_own_folders(tmp_path, run_cli):
    """Two runs whose folder names collide (as two started in the same second do: the default names
    the folder after the time to the second) each claim their own folder and write only there."""
    same = "hydra.run.dir=${unique_dir:logs/same}"  # both ask for one name: one must get logs/same_1
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ssmoe_cli", "train", *SYNTH, f"seed={seed}", same, "logger=none", *FAST],
            cwd=tmp_path,
            env=cli_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    folders = sorted(tmp_path.glob("logs/same*"))
    assert [f.name for f in folders] == ["same", "same_1"]
    seeds = set()
    for folder in folders:
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "model.safetensors").is_file()
        seeds.add(
            next(
                line
                for line in (folder / ".hydra" / "config.yaml").read_text().splitlines()
                if line.startswith("seed:")
            )
        )
        log = (folder / "train.log").read_text()  # one run's whole log, not two interleaved or cut
        assert log.count("GPU available") == 1 and log.count("`Trainer.fit` stopped") == 1, log
    assert seeds == {"seed: 1", "seed: 2"}
    # The default folders (and sweep folders) are claimed the same way.
    hydra_cfg = run_cli("train", "--cfg", "hydra").stdout
    assert hydra_cfg.count("${unique_dir:${paths.log_dir}/${task_name}/") == 2, hydra_cfg


@pytest.mark.slow
def test_ddp_workers_write_into_the_run_folder_without_lightning_advice(run_cli, tmp_path):
    proc = run_cli(
        "train", "trainer=ddp", *SYNTH, "trainer.max_epochs=1", "trainer.enable_progress_bar=false", *FAST[1:]
    )
    (folder,) = tmp_path.glob("logs/train/runs/*")  # Lightning re-runs the command: no second folder
    assert (folder / "train.log").is_file() and (folder / "train_ddp_process_1.log").is_file()
    assert "self.log('train/" not in proc.stderr  # epoch-level train metrics are synced across processes


def test_claimed_folder_names_follow_the_taken_ones(tmp_path):
    from ssmoe_cli.outdir import claim_dir

    base = str(tmp_path / "runs" / "2026-01-01_00-00-00")
    assert [claim_dir(base) for _ in range(3)] == [base, f"{base}_1", f"{base}_2"]


def test_an_output_folder_that_cannot_be_created_is_one_line(run_cli, tmp_path):
    proc = run_cli("train", *SYNTH, "hydra.run.dir=/proc/nope", *FAST, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert errors(proc.stderr) == [
        "ssmoe: error: cannot create the output folder /proc/nope: No such file or directory; choose a writable "
        "place with hydra.run.dir=DIR (one run) or hydra.sweep.dir=DIR (a sweep), or run from a writable directory"
    ]
    assert not (tmp_path / "mlflow.db").exists()


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """`ssmoe train ARGS` in the background; its stderr goes to a file (a full pipe would block it)."""
    err = tmp_path / f"stderr-{time.monotonic_ns()}"
    with err.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ssmoe_cli", "train", *args],
            cwd=tmp_path,
            env=cli_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )
    return proc, err


def _wait_for(proc: subprocess.Popen, found, what: str, timeout: float = 120):
    deadline = time.time() + timeout
    while not (hit := found()):
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)
    return hit


@pytest.mark.slow
def test_sigterm_during_training_ends_killed_keeps_the_checkpoint_and_resumes(run_cli, tmp_path):
    """How SLURM and other schedulers stop a job: exit 143 with one line, the run KILLED with the
    reason, the last epoch's checkpoint kept, and `ckpt_path=last` finishes the same run."""
    args = [*SYNTH, "trainer.max_epochs=8", "trainer.enable_progress_bar=false", *FAST[1:]]
    proc, err = _start(tmp_path, *args)
    (ckpt,) = _wait_for(proc, lambda: list(tmp_path.glob("logs/train/runs/*/checkpoints/last.ckpt")), "a checkpoint")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    stderr = err.read_text()
    assert "Traceback" not in stderr
    assert errors(stderr) == [
        "ssmoe: error: terminated by SIGTERM during training; the MLflow run is KILLED, its checkpoint "
        f"{ckpt} is kept: continue with ckpt_path=last"
    ]
    run = search_runs(tmp_path).iloc[0]
    assert run.status == "KILLED" and run["tags.error"] == "terminated by SIGTERM during training"
    assert ckpt.is_file()

    resumed = run_cli("train", *args, "ckpt_path=last")
    assert "dirpath has changed" not in resumed.stderr  # a resumed run writes into its own new folder
    runs = search_runs(tmp_path)
    assert len(runs) == 1 and runs.iloc[0].run_id == run.run_id
    assert runs.iloc[0].status == "FINISHED" and runs.iloc[0]["tags.resumed"] == "true"


def test_sigterm_stops_a_sweep_which_names_its_stopped_jobs(tmp_path):
    """The running job ends KILLED and hands in its outcome (what submitit needs from a SLURM job);
    the sweep's later jobs do not start, and its summary names them all."""
    args = ["-m", *SYNTH, "seed=0,1", "trainer.max_epochs=50", "trainer.enable_progress_bar=false", *FAST[1:]]
    proc, err = _start(tmp_path, *args)
    _wait_for(proc, lambda: list(tmp_path.glob("logs/train/multiruns/*/0/checkpoints/last.ckpt")), "a checkpoint")
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


def test_sigterm_before_training_ends_the_run_killed(tmp_path):
    """During the t-SNE gate's pretraining (model.prepare, before Lightning runs): no longer left RUNNING."""
    args = ["model=ptsne_moe", "data=synthetic", "model.num_experts=4", "model.expert_hidden=[16]"]
    args += ["gating.pretrain_epochs=100000", "gating.tsne_batch_size=200", *FAST]
    proc, err = _start(tmp_path, *args)
    _wait_for(
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


def test_a_checkpoint_that_is_not_weights_only_is_refused_as_unsafe(run_cli, tmp_path):
    import argparse

    import torch

    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=1.0)}, path)  # pickles a class
    proc = run_cli("train", *SYNTH, f"ckpt_path={path}", *FAST, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr
    (line,) = errors(proc.stderr)
    assert line.startswith(f"ssmoe: error: checkpoint {path} refused as unsafe") and "argparse.Namespace" in line
    assert search_runs(tmp_path).empty  # refused before any run was started or resumed


def test_ckpt_path_last_without_a_checkpoint_is_one_line(run_cli):
    proc = run_cli("train", *SYNTH, "ckpt_path=last", *FAST, check=False)
    assert proc.returncode == 2
    (line,) = errors(proc.stderr)
    assert "ckpt_path=last: no unfinished run of this config" in line


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
    cmd += ["trainer.enable_progress_bar=false"]
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
