"""A run's lifecycle through the real CLI: resumed again and again, skipped, identified (thread count
included), the metric a hyper-parameter search optimises, and what the CLI says about the store."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, cli_env, errors, run_parallel, search_runs, start_train, wait_for

SYNTH = ["model=fcl", "data=synthetic", "model.hidden=[16]"]


def _checkpoints(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("logs/train/runs/*/checkpoints/last.ckpt"))


def _epoch(ckpt: Path) -> int:
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])


@pytest.mark.slow
def test_killed_resumed_killed_again_resumes_from_the_newest_checkpoint(run_cli, tmp_path, mlflow_db):
    """kill -9, resume, SIGTERM, resume: the second resume continues from the first resume's checkpoint
    (no epoch twice, so one val/acc per epoch), SIGTERM ends the run KILLED with one line (how SLURM and
    other schedulers stop a job), the finished run carries no stale error, and it reaches exactly the
    test accuracy of an uninterrupted run of the same config trained at the same time in another
    folder. sgmoe: its gate draws noise in training, so a resume must restore the RNG state too."""
    epochs = 4  # killed after the 1st, stopped after the 2nd or 3rd: the third process still trains
    args = ["model=sgmoe", "data=synthetic", "data.n_train=20000", "data.batch_size=32", "model.num_experts=4"]
    args += ["model.expert_hidden=[16]", f"trainer.max_epochs={epochs}", "threads=1"]
    args += ["trainer.enable_progress_bar=false", *FAST[1:]]
    reference = tmp_path / "reference"
    reference.mkdir()
    shutil.copyfile(mlflow_db, reference / "mlflow.db")
    with (reference / "stdout").open("w") as out, (reference / "stderr").open("w") as ref_err:
        ref = subprocess.Popen(  # the uninterrupted run, on the other core
            [sys.executable, "-m", "ssmoe_cli", "train", *args],
            cwd=reference,
            env=cli_env(reference),
            stdout=out,
            stderr=ref_err,
        )
    try:
        first, _ = start_train(tmp_path, *args)
        (ckpt1,) = wait_for(first, lambda: _checkpoints(tmp_path), "a first checkpoint")
        first.kill()  # SIGKILL: nothing can close the run
        first.wait()
        assert search_runs(tmp_path).iloc[0].status == "RUNNING"  # killed: nobody could close it
        time.sleep(1.1)  # the resumed process gets an output folder of its own (named after the second)

        second, err = start_train(tmp_path, *args, "ckpt_path=last")
        # The resumed process's first checkpoint: one epoch past the first one.
        ckpt2 = wait_for(second, lambda: [p for p in _checkpoints(tmp_path) if p != ckpt1], "a resumed checkpoint")[0]
        # SIGTERM, as a scheduler stops a job. (Ctrl-C would do too, but Python raises KeyboardInterrupt
        # wherever the process is; once in a full-suite run a process so interrupted did not exit within
        # 120 s, which this test is not about.)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=120) == 143
        stderr = err.read_text()
        assert "Traceback" not in stderr
        assert errors(stderr) == [
            "ssmoe: error: terminated by SIGTERM during training; the MLflow run is KILLED, its checkpoint "
            f"{ckpt2} is kept: continue with ckpt_path=last"
        ]
        run = search_runs(tmp_path).iloc[0]
        assert run.status == "KILLED" and run["tags.error"] == "terminated by SIGTERM during training"
        assert run["tags.output_dir"] == str(ckpt2.parent.parent)  # the resumed process's folder
        assert _epoch(ckpt2) > _epoch(ckpt1)

        third = run_cli("train", *args, "ckpt_path=last")
        assert ref.wait(timeout=600) == 0, (reference / "stderr").read_text()
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
    assert str(ckpt2) in third.stdout + third.stderr  # resumed from the newest checkpoint
    assert "dirpath has changed" not in third.stderr  # a resumed run writes into its own new folder
    runs = search_runs(tmp_path)
    assert len(runs) == 1 and runs.iloc[0].run_id == run.run_id and runs.iloc[0].status == "FINISHED"
    assert runs.iloc[0]["tags.resumed"] == "true"
    assert "tags.error" not in runs or runs.iloc[0]["tags.error"] is None
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(runs.iloc[0].run_id, "val/acc")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)) == epochs, sorted(steps)

    def accuracy_lines(stdout: str) -> list[str]:
        return [line for line in stdout.splitlines() if "test accuracy" in line]

    final = accuracy_lines(third.stdout)
    assert final and final == accuracy_lines((reference / "stdout").read_text())


@pytest.mark.slow
def test_thread_count_is_part_of_the_identity_and_a_skip_builds_nothing(run_cli, tmp_path, mlflow_db):
    run_cli("train", *SYNTH, "threads=1", *FAST)
    # Both after the first run has FINISHED, so both could find it; at once, as neither changes the other.
    # Skipped: decided before data and model are built, so Lightning (which both need) is never loaded.
    skip_cmd = [sys.executable, "-X", "importtime", "-m", "ssmoe_cli", "train", *SYNTH, "threads=1"]
    with (tmp_path / "skip.out").open("w") as out, (tmp_path / "skip.err").open("w") as err:
        skipping = subprocess.Popen(
            [*skip_cmd, "skip_finished=true", *FAST], cwd=tmp_path, env=cli_env(tmp_path), stdout=out, stderr=err
        )
    try:
        other = run_cli("train", *SYNTH, "threads=2", "skip_finished=true", *FAST)
        skipping.wait(timeout=300)
    finally:
        if skipping.poll() is None:
            skipping.kill()
            skipping.wait()
    skipped_out, skipped_err = (tmp_path / "skip.out").read_text(), (tmp_path / "skip.err").read_text()
    assert skipping.returncode == 0 and "skipped, already finished" in skipped_out, skipped_err
    imported = {line.split("|")[-1].strip() for line in skipped_err.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "pytorch_lightning" not in imported
    assert "skipped" not in other.stdout  # another thread count computes other last digits: trained
    runs = search_runs(tmp_path)
    assert sorted(runs["params.threads"]) == ["1", "2"] and sorted(runs["tags.threads"]) == ["1", "2"]
    assert runs["tags.config_hash"].nunique() == 2


@pytest.mark.slow
def test_default_threads_are_recorded_and_the_browse_hint_is_shell_quoted(tmp_path, store_template):
    spaced = tmp_path / "my runs"
    spaced.mkdir()
    shutil.copyfile(store_template, spaced / "mlflow.db")  # an existing store: its creation is not tested here
    env = {**cli_env(tmp_path), "COLUMNS": "400"}  # one line, however long the path
    code = "import torch; print(torch.get_num_threads())"  # torch's default in a fresh process, same env
    default = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    proc = subprocess.run(
        [sys.executable, "-m", "ssmoe_cli", "train", *SYNTH, *FAST],
        cwd=spaced,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    threads = default.communicate(timeout=300)[0].strip()
    assert proc.returncode == 0, proc.stderr
    assert default.returncode == 0 and threads
    assert f"mlflow ui --backend-store-uri 'sqlite:///{spaced / 'mlflow.db'}'" in proc.stdout
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{spaced / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["ssmoe"]).iloc[0]
    assert run["params.threads"] == run["tags.threads"] == threads  # not "None"


@pytest.mark.slow
def test_optuna_search_optimises_validation_accuracy(run_cli, tmp_path, mlflow_db):
    proc = run_cli(
        "train",
        "-m",
        "hparams_search=ptsne_moe_optuna",
        "hydra.sweeper.n_trials=2",
        "data=synthetic",
        "gating.pretrain_epochs=1",
        "hydra.sweep.dir=sweep",
        *FAST,
    )
    printed = [line for line in proc.stdout.splitlines() if line.startswith("ssmoe: optimized metric")]
    assert len(printed) == 2 and all(line.startswith("ssmoe: optimized metric val/acc = ") for line in printed)
    runs = search_runs(tmp_path, "hparams_ptsne_moe")
    assert len(runs) == 2
    import yaml

    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(runs["metrics.val/acc"].max())  # val/acc, the last epoch's


def test_objective_refuses_a_test_metric():
    from omegaconf import OmegaConf

    from ssmoe_cli.errors import SsmoeError
    from ssmoe_cli.train.app import objective

    metrics = {"val/acc": 0.8, "val/loss": 0.5, "test/acc": 0.9}
    assert objective(OmegaConf.create({}), metrics) == 0.8
    assert objective(OmegaConf.create({"optimized_metric": "val/loss"}), metrics) == 0.5
    with pytest.raises(SsmoeError, match="test set must not select"):
        objective(OmegaConf.create({"optimized_metric": "test/acc"}), metrics)
    with pytest.raises(SsmoeError, match="not measured by this run; choose one of: val/acc, val/loss"):
        objective(OmegaConf.create({"optimized_metric": "val/f1"}), metrics)


def test_a_search_on_a_test_metric_is_refused_before_any_trial(run_cli, tmp_path):
    proc = run_cli("train", "-m", "hparams_search=ptsne_moe_optuna", "optimized_metric=test/acc", *FAST, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert errors(proc.stderr) == [
        "ssmoe: error: optimized_metric=test/acc: the test set must not select hyper-parameters; use val/acc"
    ]
    assert not (tmp_path / "mlflow.db").exists()  # no trial ran


def test_unreachable_server_hint_names_the_given_port(run_cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    proc = run_cli("train", *SYNTH, "logger=mlflow_server", f"logger.tracking_uri={uri}", *FAST, check=False)
    assert proc.returncode == 2
    (line,) = errors(proc.stderr)
    assert f"(mlflow server --host 127.0.0.1 --port {port})" in line


def _journal(tmp_path: Path, folder: Path, template: Path) -> str:
    """A run in a local store (a copy of the empty template) and an offline journal in `folder` holding
    one metric for it."""
    from ssmoe_cli.tracking import OFFLINE_JOURNAL, get_or_create_experiment, open_store

    tmp_path.mkdir(exist_ok=True)
    shutil.copyfile(template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_store(uri)
    run_id = client.create_run(get_or_create_experiment(client, "ssmoe")).info.run_id
    folder.mkdir(parents=True)
    records = [
        {"op": "header", "run_id": run_id, "tracking_uri": uri, "experiment_name": "ssmoe"},
        {"op": "metrics", "metrics": {"val/acc": 0.5}, "step": 3, "timestamp": 0},
    ]
    (folder / OFFLINE_JOURNAL).write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_id


def test_sync_looks_in_the_run_or_the_sweeps_jobs_not_the_whole_tree(run_cli, tmp_path, store_template):
    run_id = _journal(tmp_path, tmp_path / "sweep" / "3", store_template)
    deep = tmp_path / "logs" / "a" / "b" / "c"
    _journal(tmp_path / "logs", deep, store_template)
    # Two syncs at once: each reads its own folder (the second finds nothing to write).
    in_sweep, proc = run_parallel((tmp_path, ["sync", "sweep"]), (tmp_path, ["sync", "logs"]), check=False)
    assert in_sweep.returncode == 0, in_sweep.stderr
    assert f"re-logged 1 records of {Path('sweep') / '3'} into MLflow run {run_id}" in in_sweep.stdout
    # three levels down: not this run's, nor its jobs'
    assert proc.returncode == 2
    assert errors(proc.stderr) == [
        "ssmoe: error: logs: no mlflow_offline.jsonl (nothing was kept offline); nothing to sync"
    ]
    assert (deep / "mlflow_offline.jsonl").is_file()
    out = run_cli("sync", str(deep)).stdout  # the run's own folder
    assert "re-logged 1 records" in out
