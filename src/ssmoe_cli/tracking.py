"""MLflow tracking: one run per training job, owned here from creation to its final status.

Lightning's MLFlowLogger only streams the per-epoch metrics into the run created here, so that
params (the whole resolved config, not cut at 250 characters), tags, artifacts and the final
status (FINISHED, or FAILED with the error as a tag) are in one place. SQLite stores shared by
parallel jobs race on creation and migration ("database is locked"): every call retries.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ssmoe_cli.errors import SsmoeError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_TRANSIENT = ("database is locked", "database is busy", "unique constraint failed", "deadlock")


def retry(fn: Callable[[], T], attempts: int = 10, delay: float = 0.1) -> T:
    """Call fn, retrying with jittered backoff on the errors that concurrent SQLite writers cause."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MlflowException wraps sqlalchemy's OperationalError
            if attempt == attempts - 1 or not any(s in str(exc).lower() for s in _TRANSIENT):
                raise
            time.sleep(delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def resolve_tracking_uri(uri: str | None) -> str:
    """Make a relative sqlite:/// path absolute (relative to the working directory) for clarity."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def get_or_create_experiment(client: Any, name: str) -> str:
    def attempt() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:
            # Another job created it between our two calls: read it back.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    return retry(attempt)


# Keys that say where a job writes or how it is run, not what it computes: left out of the config hash
# by which a re-run sweep recognises jobs that already FINISHED.
VOLATILE_KEYS = ("paths", "callbacks", "logger", "threads", "skip_finished", "ckpt_path", "trainer.default_root_dir")


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of what a job computes (the resolved config less VOLATILE_KEYS)."""
    import hashlib
    import json

    items = sorted(
        (k, repr(v)) for k, v in flatten(config) if not any(k == v_ or k.startswith(v_ + ".") for v_ in VOLATILE_KEYS)
    )
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


class NullTracker:
    """logger=none: nothing is recorded; the run's results are only printed."""

    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_name: str | None = None

    def start(self, config: Mapping[str, Any], tags: Mapping[str, str], run_name: str | None = None) -> None:
        pass

    def lightning_logger(self) -> Any:
        return False

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        pass

    def describe(self) -> str:
        return "not tracked (logger=none)"

    def find_finished(self, config_hash: str) -> tuple[str, dict[str, float]] | None:
        """A FINISHED run of this experiment with the same config hash: (run id, its metrics)."""
        return None

    def find_unfinished(self, config_hash: str) -> list[tuple[str, str]]:
        """Runs of this config that did not finish, newest first: (run id, output dir)."""
        return []

    def resume(self, run_id: str) -> None:
        """Continue logging into an existing run instead of starting one."""


class MlflowTracker(NullTracker):
    """A run in an MLflow tracking store (SQLite file by default, or a tracking server)."""

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = "ssmoe") -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment_name = experiment_name
        self.run_id: str | None = None
        self._client: Any = None
        self._checked = False

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def check_server(self, timeout: float = 5.0) -> None:
        """For an http(s) tracking URI, fail in seconds with one line if the server does not answer
        (MLflow's own client would retry for minutes before training even starts)."""
        if self._checked or not self.tracking_uri.startswith(("http://", "https://")):
            return
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(self.tracking_uri.rstrip("/") + "/health", timeout=timeout).close()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SsmoeError(
                f"MLflow tracking server {self.tracking_uri} is unreachable ({reason}); start it "
                "(mlflow server --host 127.0.0.1 --port 5000) or log locally with logger=mlflow"
            ) from None
        self._checked = True

    def experiment_id(self) -> str:
        self.check_server()
        return get_or_create_experiment(self.client, self.experiment_name)

    def start(self, config: Mapping[str, Any], tags: Mapping[str, str], run_name: str | None = None) -> None:
        import yaml
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        exp_id = self.experiment_id()
        run = retry(lambda: self.client.create_run(exp_id, tags=dict(tags), run_name=run_name))
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flatten(config)]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = params[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            retry(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))
        # The whole config as a file too: MLflow params are cut, and this one re-runs as is.
        self.log_text(yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")

    def lightning_logger(self) -> Any:
        from pytorch_lightning.loggers import MLFlowLogger

        class RunOwnedMLFlowLogger(MLFlowLogger):
            """Streams metrics into our run; leaves params and the run's status to the tracker."""

            def log_hyperparams(self, params: Any) -> None:
                pass

            def finalize(self, status: str = "success") -> None:
                pass

        return RunOwnedMLFlowLogger(
            experiment_name=self.experiment_name, tracking_uri=self.tracking_uri, run_id=self.run_id
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        retry(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        retry(lambda: self.client.log_batch(self.run_id, tags=batch))

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.run_id is None:
            return
        if error is not None:
            self.set_tags({"error": error})
        retry(lambda: self.client.set_terminated(self.run_id, status))

    def describe(self) -> str:
        return f"MLflow run {self.run_id} in experiment '{self.experiment_name}' at {self.tracking_uri}"

    def find_unfinished(self, config_hash: str) -> list[tuple[str, str]]:
        exp_id = self.experiment_id()
        query = f"tags.config_hash = '{config_hash}' and attributes.status != 'FINISHED'"
        runs = retry(
            lambda: self.client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"])
        )
        return [(r.info.run_id, r.data.tags.get("output_dir", "")) for r in runs]

    def resume(self, run_id: str) -> None:
        self.run_id = run_id
        retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        self.set_tags({"resumed": "true"})

    def find_finished(self, config_hash: str) -> tuple[str, dict[str, float]] | None:
        exp_id = self.experiment_id()
        query = f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'"
        runs = retry(lambda: self.client.search_runs([exp_id], filter_string=query, max_results=1))
        return (runs[0].info.run_id, dict(runs[0].data.metrics)) if runs else None
