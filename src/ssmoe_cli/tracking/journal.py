"""The offline journal: records a run could not send to a lost tracking server, one JSON line each,
replayed into the run later (by the tracker itself when the server comes back, or by `ssmoe sync`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.tracking.store import open_store, resolve_tracking_uri, retry

OFFLINE_JOURNAL = "mlflow_offline.jsonl"
SYNCED_JOURNAL = "mlflow_offline.synced.jsonl"  # the journal once re-logged: never replayed twice


def apply_record(client: Any, run_id: str | None, record: Mapping[str, Any]) -> None:
    """Write one tracker record (live, or replayed from an offline journal) into an MLflow run."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

    op = record["op"]
    if op == "metrics":
        batch = [Metric(k, v, record["timestamp"], record["step"]) for k, v in record["metrics"].items()]
        client.log_batch(run_id, metrics=batch)
    elif op == "params":
        params = [Param(k, v) for k, v in record["params"].items()]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()])
    elif op == "delete_tags":
        for key in record["keys"]:
            client.delete_tag(run_id, key)
    elif op == "artifact":
        client.log_artifact(run_id, record["path"], record["artifact_path"])
    elif op == "text":
        client.log_text(run_id, record["text"], record["artifact_file"])
    elif op == "end":
        client.set_terminated(run_id, record["status"])
    else:
        raise ValueError(f"unknown tracker record {op!r}")


def sync_journal(journal: Path, tracking_uri: str | None = None) -> tuple[str, int]:
    """Re-log an offline journal into its run (at the journal's tracking URI unless one is given),
    then rename it *.synced.jsonl so that it is never replayed twice. Returns (run id, records)."""
    try:
        lines = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise SsmoeError(f"cannot read the offline journal {journal}: {exc}") from None
    header = next((r for r in lines if r.get("op") == "header"), None)
    if header is None or not header.get("run_id"):
        raise SsmoeError(f"{journal} is not an ssmoe offline journal (no header with a run id)")
    uri = resolve_tracking_uri(tracking_uri or header["tracking_uri"])
    client = open_store(uri)
    run_id = header["run_id"]
    try:
        retry(lambda: client.get_run(run_id))
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise SsmoeError(
            f"cannot reach run {run_id} at {uri} ({first}); start the server that holds it, or pass --tracking-uri"
        ) from None
    records = [r for r in lines if r.get("op") != "header"]
    for record in records:
        retry(lambda record=record: apply_record(client, run_id, record))
    journal.rename(journal.with_name(SYNCED_JOURNAL))
    return run_id, len(records)


def find_journals(target: Path) -> list[Path]:
    """The offline journals of a run directory (or a journal file itself), or of a sweep directory's jobs
    (its direct subdirectories): never a search of the whole tree below `target`."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise SsmoeError(f"{target}: no such file or directory; give a run's output directory")
    journals = [target / OFFLINE_JOURNAL] if (target / OFFLINE_JOURNAL).is_file() else []
    journals = journals or sorted(target.glob(f"*/{OFFLINE_JOURNAL}"))
    if not journals:
        synced = (target / SYNCED_JOURNAL).is_file() or any(target.glob(f"*/{SYNCED_JOURNAL}"))
        what = "already re-logged" if synced else f"no {OFFLINE_JOURNAL} (nothing was kept offline)"
        raise SsmoeError(f"{target}: {what}; nothing to sync")
    return journals
