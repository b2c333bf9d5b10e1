"""Experiment configs, parallel sweeps (joblib), resuming a sweep, DDP on CPU, a real MLflow server."""

from __future__ import annotations

import pytest
from conftest import FAST, composed, search_runs

SYNTH = ["model=fcl", "data=synthetic", "model.hidden=[16]"]


@pytest.mark.parametrize(
    "experiment", ["paper", "quick", "ablation_topology", "ablation_gating", "ablation_perplexity"]
)
def test_experiment_configs_compose(experiment):
    hydra = composed(f"experiment={experiment}", hydra=True)
    assert hydra["sweeper"]["params"]["seed"] == "0,1,2"
    assert hydra["launcher"]["_target_"].startswith("hydra_plugins.hydra_joblib_launcher")
    assert hydra["launcher"]["n_jobs"] == 2
    composed(f"experiment={experiment}")  # the job's config resolves too


def test_slurm_and_optuna_configs_compose(run_cli):
    out = run_cli("train", "hydra/launcher=slurm", "--cfg", "hydra").stdout
    assert "submitit" in out and "timeout_min: 120" in out
    out = run_cli("train", "hparams_search=ptsne_moe_optuna", "--cfg", "hydra").stdout
    assert "optuna" in out and "direction: maximize" in out


@pytest.mark.slow
def test_quick_grid_with_joblib_runs_every_job_in_parallel(run_cli, tmp_path, mlflow_db):
    proc = run_cli(
        "train",
        "-m",
        "experiment=quick",
        "data=synthetic",
        "model=fcl,sgmoe",
        "prune=none,magnitude",
        "seed=0",
        "data.batch_size=128",
        *FAST[1:],
    )
    assert "Joblib" in proc.stdout + proc.stderr
    runs = search_runs(tmp_path, "quick")
    assert len(runs) == 4 and set(runs.status) == {"FINISHED"}
    assert {(m, p) for m, p in zip(runs["tags.model"], runs["tags.prune"], strict=True)} == {
        ("fcl", "none"),
        ("fcl", "magnitude"),
        ("sgmoe", "none"),
        ("sgmoe", "magnitude"),
    }
    pruned = runs[runs["tags.prune"] == "magnitude"]
    assert (pruned["metrics.prune/sparsity"] - 0.9).abs().max() < 1e-4  # exact per layer; rounding across layers


@pytest.mark.slow
def test_rerun_with_skip_finished_does_not_train_again(run_cli, tmp_path, mlflow_db):
    run_cli("train", "-m", *SYNTH, "seed=0,1", "skip_finished=true", *FAST)
    assert len(search_runs(tmp_path)) == 2
    again = run_cli("train", "-m", *SYNTH, "seed=0,1,2", "skip_finished=true", *FAST)
    assert again.stdout.count("skipped, already finished") == 2  # seeds 0 and 1
    runs = search_runs(tmp_path)  # seed 2, a new config, trained
    assert len(runs) == 3 and sorted(runs["params.seed"]) == ["0", "1", "2"]


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes_logs_one_run(run_cli, tmp_path, mlflow_db):
    proc = run_cli(
        "train",
        "trainer=ddp",
        *SYNTH,
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "timing.repeats_b1=5",
        "timing.repeats_b256=3",
    )
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # the second process really ran
    runs = search_runs(tmp_path)
    assert len(runs) == 1 and runs.iloc[0].status == "FINISHED"
    assert runs.iloc[0]["metrics.test/acc"] > 0.5
    # Both processes write into the one run folder: Lightning re-runs the command, no second folder.
    (folder,) = tmp_path.glob("logs/train/runs/*")
    assert (folder / "train.log").is_file() and (folder / "train_ddp_process_1.log").is_file()
    assert "self.log('" not in proc.stderr  # every epoch-level metric is synced across processes: no advice


@pytest.mark.slow
def test_logger_mlflow_server_sends_the_run_to_a_real_server(run_cli, tmp_path, mlflow_server):
    run_cli("train", "logger=mlflow_server", f"logger.tracking_uri={mlflow_server.url}", *SYNTH, *FAST)
    import mlflow

    mlflow.set_tracking_uri(mlflow_server.url)
    runs = mlflow.search_runs(experiment_names=["ssmoe"])
    assert len(runs) == 1 and runs.iloc[0].status == "FINISHED"
    assert runs.iloc[0]["metrics.test/acc"] == runs.iloc[0]["metrics.test/acc"]
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store
    assert not list(tmp_path.glob("logs/train/runs/*/mlflow_offline*"))  # nothing was kept offline
