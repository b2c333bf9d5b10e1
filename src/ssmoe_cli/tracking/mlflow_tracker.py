"""MLflow tracking: one run per training job, owned here from creation to its final status.

Lightning's per-epoch metrics reach the run through this tracker too (tracking.lightning), so params
(the whole resolved config, not cut at 250 characters), metrics, tags, artifacts and the final status
(FINISHED, or FAILED with the error as a tag) all take one path. SQLite stores shared by parallel jobs
race on creation and migration ("database is locked"): every call retries.

A tracking server lost mid-run does not stop training: from the first write it refuses, every record
goes to an offline journal (mlflow_offline.jsonl in the run's output directory) instead. At the end
the tracker re-logs the journal itself if the server is back; if not, `ssmoe sync DIR` does it later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.tracking.identity import flatten
from ssmoe_cli.tracking.journal import OFFLINE_JOURNAL, apply_record, sync_journal
from ssmoe_cli.tracking.store import get_or_create_experiment, open_store, resolve_tracking_uri, retry

log = logging.getLogger(__name__)

# What MLflow's REST client says once its own retries are spent on a server that is gone or failing.
# Most specific first: the first one found names the reason in the log.
_SERVER_LOST = (
    "connection refused",
    "connection reset",
    "connection aborted",
    "remotedisconnected",
    "timed out",
    "bad gateway",
    "service unavailable",
    "failed to establish a new connection",
    "max retries exceeded",
)

# Tags an attempt leaves when it stops (see train.job.train): removed when the run is resumed.
STALE_ON_RESUME = ("error", "failed_step")


class MlflowTracker:
    """A run in an MLflow tracking store (SQLite file by default, or a tracking server).

    http_retries / http_timeout_s bound how long MLflow's REST client insists on a dead server (its
    defaults retry for minutes) before this tracker switches to its offline journal in offline_dir;
    MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT, when set, win.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "ssmoe",
        offline_dir: str | Path | None = None,
        http_retries: int = 3,
        http_timeout_s: int = 15,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment_name = experiment_name
        self.run_id: str | None = None
        self.offline_dir = Path(offline_dir) if offline_dir else Path.cwd()
        self.http_retries = http_retries
        self.http_timeout_s = http_timeout_s
        self.journal: Path | None = None  # set once the server is lost: where the records go
        self.journal_records = 0
        self.resynced = False
        self._client: Any = None
        self._checked = False

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = open_store(self.tracking_uri)
        return self._client

    @property
    def remote(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    def server_answers(self, timeout: float = 5.0) -> bool:
        import urllib.request

        try:
            urllib.request.urlopen(self.tracking_uri.rstrip("/") + "/health", timeout=timeout).close()
        except OSError:  # URLError: refused, timed out, no route
            return False
        return True

    def check_server(self, timeout: float = 5.0) -> None:
        """For an http(s) tracking URI, fail in seconds with one line if the server does not answer
        (MLflow's own client would retry for minutes before training even starts)."""
        if self._checked or not self.remote:
            return
        if not self.server_answers(timeout):
            from urllib.parse import urlsplit

            where = urlsplit(self.tracking_uri)
            port = where.port or (443 if where.scheme == "https" else 80)
            raise SsmoeError(
                f"MLflow tracking server {self.tracking_uri} is unreachable; start it "
                f"(mlflow server --host {where.hostname} --port {port}) or log locally with logger=mlflow"
            )
        self._checked = True

    def experiment_id(self) -> str:
        self.check_server()
        return get_or_create_experiment(self.client, self.experiment_name)

    @contextlib.contextmanager
    def _http_limits(self) -> Iterator[None]:
        """MLflow reads its retry settings from the environment at every request: bound them while
        this tracker writes (unless the user set them), then put the environment back."""
        limits = {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.http_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.http_timeout_s),
        }
        added = [key for key in limits if key not in os.environ] if self.remote else []
        os.environ.update({key: limits[key] for key in added})
        try:
            yield
        finally:
            for key in added:
                os.environ.pop(key, None)

    def _write(self, record: dict[str, Any]) -> None:
        """Send one record to the run; once the server is lost, keep it (and every later one) offline."""
        if self.journal is None:
            try:
                with self._http_limits():
                    retry(lambda: apply_record(self.client, self.run_id, record))
                return
            except Exception as exc:
                if not (self.remote and any(s in str(exc).lower() for s in _SERVER_LOST)):
                    raise
                self._go_offline(exc)
        assert self.journal is not None
        with self.journal.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        self.journal_records += 1

    def _go_offline(self, exc: Exception) -> None:
        self.offline_dir.mkdir(parents=True, exist_ok=True)
        self.journal = self.offline_dir / OFFLINE_JOURNAL
        message = str(exc) or type(exc).__name__
        reason = next((s for s in _SERVER_LOST if s in message.lower()), message[:200])
        header = {
            "op": "header",
            "run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name,
            "lost_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "error": message[:2000],
        }
        with self.journal.open("a") as fh:
            fh.write(json.dumps(header) + "\n")
        log.warning(
            "lost the MLflow server %s (%s); training goes on, records go to %s",
            self.tracking_uri,
            reason,
            self.journal,
        )

    def start(self, config: Mapping[str, Any], tags: Mapping[str, str], run_name: str | None = None) -> None:
        import yaml

        exp_id = self.experiment_id()
        with self._http_limits():
            run = retry(lambda: self.client.create_run(exp_id, tags=dict(tags), run_name=run_name))
        self.run_id = run.info.run_id
        self.log_params(dict(flatten(config)))
        # The whole config as a file too: MLflow params are cut, and this one re-runs as is.
        self.log_text(yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")

    def resume(self, run_id: str, tags: Mapping[str, str] | None = None) -> None:
        run = retry(lambda: self.client.get_run(run_id))
        self.run_id = run_id
        retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        self.set_tags({**(tags or {}), "resumed": "true"})
        # The last attempt's reason to stop is not this attempt's: a run that now finishes has no error.
        stale = [key for key in STALE_ON_RESUME if key in run.data.tags]
        if stale:
            self._write({"op": "delete_tags", "keys": stale})

    def lightning_logger(self) -> Any:
        from ssmoe_cli.tracking.lightning import TrackerLogger

        return TrackerLogger(self)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self._write({"op": "metrics", "metrics": values, "step": step or 0, "timestamp": int(time.time() * 1000)})

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        self._write({"op": "params", "params": {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in params.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._write({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._write({"op": "text", "text": text, "artifact_file": artifact_file})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._write({"op": "tags", "tags": {k: str(v)[:5000] for k, v in tags.items()}})

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.run_id is None:
            return
        if error is not None:
            self.set_tags({"error": error})
        self._write({"op": "end", "status": status})
        if self.journal is not None and self.server_answers(timeout=2.0):
            # The server is back (restarted, a network blip): re-log now instead of leaving it to the user.
            try:
                self.journal_records = sync_journal(self.journal)[1]
                self.resynced = True
            except Exception as exc:  # the journal stays where it is; offline_note says how to retry
                log.warning("re-logging %s failed: %s", self.journal, exc)

    def describe(self) -> str:
        where = f"MLflow run {self.run_id} in experiment '{self.experiment_name}' at {self.tracking_uri}"
        if self.journal is not None and not self.resynced:
            return f"{where} (server lost mid-run: the rest is in {self.journal})"
        return where

    def offline_note(self) -> str | None:
        if self.journal is None:
            return None
        if self.resynced:
            return (
                f"the MLflow server {self.tracking_uri} was lost during the run and came back; the "
                f"{self.journal_records} records kept meanwhile were re-logged into run {self.run_id}"
            )
        return (
            f"lost the MLflow server {self.tracking_uri} during the run; {self.journal_records} records are "
            f"kept in {self.journal}; once the server is back, re-log them with: ssmoe sync {self.journal.parent}"
        )

    def find_unfinished(self, config_hash: str) -> list[tuple[str, str]]:
        exp_id = self.experiment_id()
        query = f"tags.config_hash = '{config_hash}' and attributes.status != 'FINISHED'"
        runs = retry(
            lambda: self.client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"])
        )
        dirs = ("output_dir", "previous_output_dir")
        return [(r.info.run_id, [r.data.tags[t] for t in dirs if r.data.tags.get(t)]) for r in runs]

    def find_finished(self, config_hash: str) -> tuple[str, dict[str, float]] | None:
        exp_id = self.experiment_id()
        query = f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'"
        runs = retry(lambda: self.client.search_runs([exp_id], filter_string=query, max_results=1))
        return (runs[0].info.run_id, dict(runs[0].data.metrics)) if runs else None
