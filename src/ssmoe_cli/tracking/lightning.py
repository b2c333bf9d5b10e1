"""Lightning's logger for ssmoe: streams the trainer's metrics into the tracker's run.

The tracker (MlflowTracker) owns the run: params, tags, artifacts, status, and what happens when
the tracking server goes away. This logger only hands it Lightning's metrics, so that they take the
same path as everything else (and are kept offline with the rest when the server is lost).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only


class TrackerLogger(Logger):
    def __init__(self, tracker: Any) -> None:
        super().__init__()
        self.tracker = tracker

    @property
    def name(self) -> str | None:
        return self.tracker.experiment_name

    @property
    def version(self) -> str | None:
        return self.tracker.run_id

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if not isinstance(v, str)}
        if numeric:
            self.tracker.log_metrics(numeric, step=step)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Nothing: the tracker logs the whole resolved config when it starts the run."""
