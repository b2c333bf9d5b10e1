"""Reading MLflow for `ssmoe report`: the store, experiments, training runs, artifacts; the report run.

Only runs tagged run_type=train are read, so report runs logged into the same experiments never mix
with them. Every store call goes through tracking's retry (parallel writers lock SQLite). A store
that cannot be read (a corrupt mlflow.db, an unreachable server) is one error line, not a traceback.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.report.records import RunRecord
from ssmoe_cli.tracking import get_or_create_experiment, resolve_tracking_uri, retry

TRAIN_FILTER = "tags.run_type = 'train'"
REPORT_RUN_TYPE = "report"


class ReportError(SsmoeError):
    """Nothing to report on (no store, no such experiment, no runs): a message, not a traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def open_client(tracking_uri: str | None) -> tuple[Any, str]:
    """An MlflowClient for the URI (default as `ssmoe train`) that has answered one query.

    Refuses a SQLite file that does not exist (opening it would create an empty mlflow.db here), and
    turns a store that cannot be read into a ReportError naming it.
    """
    uri = resolve_tracking_uri(tracking_uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix) :]).is_file():
        raise ReportError(
            f"no MLflow store at {uri[len(prefix) :]}: run `ssmoe train` in this directory first, "
            "or pass --tracking-uri (or set MLFLOW_TRACKING_URI)"
        )
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        retry(lambda: client.search_experiments(max_results=1))
    except Exception as exc:  # sqlalchemy's DatabaseError, MlflowException, connection errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(
            f"cannot read the MLflow store at {uri} ({first[:200]}); check --tracking-uri, "
            "or move a damaged mlflow.db aside and re-run `ssmoe train`"
        ) from None
    return client, uri


def find_experiments(client: Any, names: Sequence[str], uri: str) -> list[Any]:
    """The experiments with these names; a clear error naming the ones that exist otherwise."""
    found, missing = [], []
    for name in names:
        exp = retry(lambda name=name: client.get_experiment_by_name(name))
        if exp is None:
            missing.append(name)
        else:
            found.append(exp)
    if missing:
        existing = sorted(e.name for e in retry(lambda: client.search_experiments()))
        raise ReportError(
            f"no experiment named {', '.join(repr(m) for m in missing)} at {uri}; "
            f"experiments there: {', '.join(existing) or 'none'}"
        )
    return found


def latest_experiment(client: Any, uri: str) -> Any:
    """The experiment of the newest FINISHED training run (what a bare `ssmoe report` reads)."""
    runs = retry(
        lambda: client.search_runs(
            [e.experiment_id for e in retry(lambda: client.search_experiments())],
            f"{TRAIN_FILTER} and attributes.status = 'FINISHED'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
    )
    if not runs:
        raise ReportError(f"no finished training runs in any experiment at {uri}: run `ssmoe train` first", exit_code=1)
    return retry(lambda: client.get_experiment(runs[0].info.experiment_id))


def experiments_with_runs(client: Any) -> list[str]:
    """Names of the experiments that hold training runs, newest first."""
    names = []
    for exp in retry(lambda: client.search_experiments()):
        page = retry(lambda exp=exp: client.search_runs([exp.experiment_id], TRAIN_FILTER, max_results=1))
        if page:
            names.append(exp.name)
    return names


def _record(run: Any, experiment: str) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        experiment=experiment,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        name=run.info.run_name or "",
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )


def fetch_train_runs(client: Any, experiments: Sequence[Any]) -> tuple[list[RunRecord], list[RunRecord]]:
    """(FINISHED training runs, training runs in any other state), oldest first."""
    names = {e.experiment_id: e.name for e in experiments}
    runs: list[RunRecord] = []
    token = None
    while True:
        page = retry(
            lambda token=token: client.search_runs(
                list(names), TRAIN_FILTER, max_results=1000, order_by=["attributes.start_time ASC"], page_token=token
            )
        )
        runs += [_record(r, names[r.info.experiment_id]) for r in page]
        token = page.token
        if not token:
            break
    finished = [r for r in runs if r.status == "FINISHED"]
    return finished, [r for r in runs if r.status != "FINISHED"]


def fetch_artifact(client: Any, run_id: str, artifact_path: str, dest: Path) -> Path | None:
    """Copy one artifact file of a run to `dest`; None when the run does not have it."""
    folder, _, name = artifact_path.rpartition("/")
    try:
        listed = retry(lambda: client.list_artifacts(run_id, folder or None))
    except Exception:  # an unreachable artifact store is a missing plot, not a failed report
        return None
    if not any(f.path == artifact_path for f in listed):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = retry(lambda: client.download_artifacts(run_id, artifact_path, tmp))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)
    return dest


def start_report_run(client: Any, experiment: str, note: str) -> str:
    """Create the report's run (tags run_type=report and the sentence as its MLflow note); returns its id."""
    exp_id = get_or_create_experiment(client, experiment)
    tags = {"run_type": REPORT_RUN_TYPE, "mlflow.note.content": note}
    run = retry(lambda: client.create_run(exp_id, tags=tags, run_name=f"report-{time.strftime('%Y%m%d-%H%M%S')}"))
    return run.info.run_id


def finish_report_run(
    client: Any,
    run_id: str,
    *,
    files: Mapping[str, Sequence[Path]],
    texts: Mapping[str, str],
    params: Mapping[str, str],
    metrics: Mapping[str, float],
) -> None:
    """Log params, metrics and files into the report run and end it FINISHED (FAILED if logging fails).

    `files` maps an artifact folder to local files; `texts` maps artifact file names to their contents.
    """
    from mlflow.entities import Metric, Param

    try:
        now = int(time.time() * 1000)
        retry(
            lambda: client.log_batch(
                run_id,
                params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            )
        )
        for folder, paths in files.items():
            for path in paths:
                retry(lambda path=path, folder=folder: client.log_artifact(run_id, str(path), folder or None))
        for name, text in texts.items():
            retry(lambda name=name, text=text: client.log_text(run_id, text, name))
    except BaseException:
        retry(lambda: client.set_terminated(run_id, "FAILED"))
        raise
    retry(lambda: client.set_terminated(run_id, "FINISHED"))
