"""Configs composed as `ssmoe train` composes them: the multirun callbacks, logger=none, -m with --cfg."""

from __future__ import annotations

import pytest
from conftest import errors
from hydra import compose, initialize_config_module

from ssmoe_cli.hydra_callbacks import PrepareExperiment


@pytest.mark.parametrize("logger", ["none", "mlflow"])
def test_prepare_experiment_builds_any_logger_without_a_job_directory(logger, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with initialize_config_module("ssmoe_cli.conf", version_base=None):
        uri = [f"logger.tracking_uri=sqlite:///{tmp_path}/m.db"] if logger == "mlflow" else []
        cfg = compose("train", overrides=[f"logger={logger}", *uri])
    # Called directly, a failure raises (inside Hydra it would only be a warning, and the sweep went on
    # without its experiment prepared: logger=none used to fail so, passing offline_dir to NullTracker).
    PrepareExperiment().on_multirun_start(cfg)
    assert (tmp_path / "m.db").exists() == (logger == "mlflow")  # the experiment was created once, up front


def test_logger_none_runs_an_experiment_that_names_its_mlflow_experiment():
    from hydra.utils import instantiate

    from ssmoe_cli.tracking import NullTracker

    with initialize_config_module("ssmoe_cli.conf", version_base=None):
        cfg = compose("train", overrides=["experiment=paper", "logger=none"])
    assert cfg.logger.experiment_name == "paper"
    assert isinstance(instantiate(cfg.logger), NullTracker)


def test_multirun_with_cfg_is_one_line(run_cli):
    proc = run_cli("train", "-m", "experiment=frontier_quick", "--cfg", "job", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert errors(proc.stderr) == [
        "ssmoe: error: --cfg/--info print one job's config and cannot be combined with -m: drop -m to see "
        "a job (ssmoe train experiment=frontier --cfg job), or --cfg hydra to see the sweep's parameters"
    ]
