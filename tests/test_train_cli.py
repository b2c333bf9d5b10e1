"""`ssmoe train` end to end through the real CLI: the MLflow contract, determinism, sweeps, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import FAST, run_in_folders, search_runs

CONTRACT = [
    "train/loss",
    "val/loss",
    "val/acc",
    "test/loss",
    "test/acc",
    "params/total",
    "params/nonzero",
    "params/active_per_sample",
    "flops/per_sample",
    "compression/ratio_vs_fcl",
    "time/train_s",
    "time/epoch_s",
    "time/infer_ms_b1",
    "time/infer_ms_b256",
]


@pytest.fixture(scope="module")
def runs_at_once(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> dict:
    """The commands of this module, each in a folder of its own (an existing store in each), run at once
    with one thread each: name -> (folder, completed process)."""
    root = tmp_path_factory.mktemp("train_cli")
    seeded = ["train", "model=fcl", "data=synthetic", "model.hidden=[32]", "logger=none", "threads=1", *FAST]
    commands = {
        "contract": ["train", "model=fcl", "data=digits", "trainer.max_epochs=3", "seed=1", "threads=1"]
        + ["trainer.enable_progress_bar=false", *FAST[1:]],
        "seed3": [*seeded, "seed=3"],
        "seed3_again": [*seeded, "seed=3"],
        "seed4": [*seeded, "seed=4", "trainer.max_epochs=2"],
        "multirun": ["train", "-m", "model=fcl", "data=synthetic", "model.hidden=[16]", "seed=0,1", "threads=1"] + FAST,
        # data.root unset: the cache (in the folder, see cli_env) holds no copy
        "missing": ["train", "data=fashion_mnist", "data.system_dir=null", "data.download=false", "threads=1", *FAST],
    }
    return run_in_folders(root, commands, store_template)


def finished(runs_at_once: dict, name: str):
    folder, proc = runs_at_once[name]
    assert proc.returncode == 0, proc.stderr
    return folder, proc


@pytest.mark.slow
def test_digits_run_logs_the_contract(runs_at_once):
    tmp_path, proc = finished(runs_at_once, "contract")
    assert "ssmoe train: results" in proc.stdout and "mlflow ui" in proc.stdout
    runs = search_runs(tmp_path)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run.status == "FINISHED"
    for key in CONTRACT:
        assert f"metrics.{key}" in runs.columns and run[f"metrics.{key}"] == run[f"metrics.{key}"], key
    assert run["metrics.test/acc"] > 0.8  # 3 epochs on digits
    # 64-300-100-10: every parameter nonzero and used; the baseline follows the data's sizes.
    assert run["metrics.params/total"] == 64 * 300 + 300 + 300 * 100 + 100 + 1010
    assert run["metrics.params/nonzero"] == run["metrics.params/active_per_sample"]
    assert run["metrics.compression/ratio_vs_fcl"] == 1.0
    # Params: the whole resolved config, flattened; tags name the choices.
    assert run["params.model.hidden"] == "[300, 100]" and run["params.seed"] == "1"
    assert run["params.data._target_"] == "ssmoe_cli.data.digits.Digits"
    assert run["tags.model"] == "fcl" and run["tags.data"] == "digits" and run["tags.prune"] == "none"
    assert run["tags.ssmoe_version"]
    # Per-epoch history, and the full config as an artifact.
    import mlflow

    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.run_id, "val/acc")) == 3
    cfg_path = client.download_artifacts(run.run_id, "config.yaml", str(tmp_path))
    with open(cfg_path) as fh:
        cfg = yaml.safe_load(fh)
    assert cfg["trainer"]["max_epochs"] == 3 and cfg["model"]["in_features"] == 64


@pytest.mark.slow
def test_same_seed_same_result(runs_at_once):
    # The three ran at the same time as other runs: a result must not depend on what else the machine does.
    first, second, other = (finished(runs_at_once, name)[1].stdout for name in ("seed3", "seed3_again", "seed4"))

    def acc(text: str) -> str:
        return next(line for line in text.splitlines() if "test accuracy" in line)

    assert acc(first) == acc(second)
    assert "test accuracy" in other


@pytest.mark.slow
def test_multirun_puts_jobs_in_one_experiment(runs_at_once):
    runs = search_runs(finished(runs_at_once, "multirun")[0])
    assert len(runs) == 2 and set(runs["params.seed"]) == {"0", "1"}
    assert set(runs.status) == {"FINISHED"}
    assert runs["tags.sweep_id"].nunique() == 1 and sorted(runs["tags.job_num"]) == ["0", "1"]


@pytest.mark.slow
def test_missing_data_is_one_line_and_a_failed_run(runs_at_once):
    tmp_path, proc = runs_at_once["missing"]
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ssmoe: error:")]
    assert len(errors) == 1 and "data.root" in errors[0] and "dataset-fashion-mnist" in errors[0]
    runs = search_runs(tmp_path)
    assert list(runs.status) == ["FAILED"]
    assert "not found" in runs.iloc[0]["tags.error"]
