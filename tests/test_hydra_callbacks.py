"""The multirun callbacks on configs composed as `ssmoe train -m` composes them."""

from __future__ import annotations

import pytest
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
