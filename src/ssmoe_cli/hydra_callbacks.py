"""Hydra callbacks of `ssmoe train` (configured in conf/hydra/default.yaml)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate

from ssmoe_cli.tracking import MlflowTracker


class PrepareExperiment(Callback):
    """Create the MLflow experiment once, before a multirun launches its jobs.

    Parallel jobs on one SQLite store then only read it instead of racing to create it and to
    migrate the schema (the "database is locked" failure).
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        tracker = instantiate(config.logger)
        if isinstance(tracker, MlflowTracker):
            tracker.experiment_id()
