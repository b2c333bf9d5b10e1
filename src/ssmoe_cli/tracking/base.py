"""The Tracker contract `ssmoe train` relies on, and the tracker that records nothing (logger=none)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """One run of one training job, from start (or resume) to its final status.

    Every record (params, metrics, tags, artifacts, status) goes through these methods, Lightning's
    per-epoch metrics included (`lightning_logger`), so that a tracker decides alone where they go.
    """

    run_id: str | None
    tracking_uri: str | None
    experiment_name: str | None

    @property
    def remote(self) -> bool:
        """True for an http(s) tracking server (rather than a local store)."""

    def start(self, config: Mapping[str, Any], tags: Mapping[str, str], run_name: str | None = None) -> None:
        """Create the run: tags, the resolved config as params and as config.yaml."""

    def resume(self, run_id: str, tags: Mapping[str, str] | None = None) -> None:
        """Continue logging into an existing run instead of starting one: status RUNNING again, `tags`
        set (this process's output_dir), and the stale error / failed_step of the last attempt removed."""

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Close the run with FINISHED, FAILED or KILLED (and the error, if any, as a tag)."""

    def lightning_logger(self) -> Any:
        """A Lightning logger that feeds the trainer's metrics into this run (False: none)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def describe(self) -> str:
        """One line saying where the run's records are."""

    def offline_note(self) -> str | None:
        """One line on records kept offline (server lost mid-run) and how to re-log them; None if none."""

    def find_finished(self, config_hash: str) -> tuple[str, dict[str, float]] | None:
        """A FINISHED run of this experiment with the same config hash: (run id, its metrics)."""

    def find_unfinished(self, config_hash: str) -> list[tuple[str, list[str]]]:
        """Runs of this config that did not finish, newest first: (run id, the output directories that
        may hold its newest checkpoint: the last process's, and the one that process resumed from)."""


class NullTracker:
    """logger=none: nothing is recorded; the run's results are only printed."""

    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_name: str | None = None
    remote = False

    def __init__(self, **settings: Any) -> None:
        """Takes and ignores the other loggers' settings: an experiment config that names its MLflow
        experiment (logger.experiment_name=paper) must still run with logger=none."""

    def start(self, config: Mapping[str, Any], tags: Mapping[str, str], run_name: str | None = None) -> None:
        pass

    def resume(self, run_id: str, tags: Mapping[str, str] | None = None) -> None:
        pass

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        pass

    def lightning_logger(self) -> Any:
        return False

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def describe(self) -> str:
        return "not tracked (logger=none)"

    def offline_note(self) -> str | None:
        return None

    def find_finished(self, config_hash: str) -> tuple[str, dict[str, float]] | None:
        return None

    def find_unfinished(self, config_hash: str) -> list[tuple[str, list[str]]]:
        return []
