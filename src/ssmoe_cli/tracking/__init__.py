"""Run tracking for `ssmoe train`: the Tracker contract and its MLflow and null implementations, the
store (URI, experiments, retries), the offline journal, the config identity, and skip/resume policy.

    base.py            Tracker (a Protocol) and NullTracker (logger=none)
    mlflow_tracker.py  MlflowTracker: one MLflow run per job, offline journal when the server is lost
    store.py           tracking URI, experiment creation, retries on SQLite contention
    journal.py         the offline journal: apply_record, sync_journal (`ssmoe sync`), find_journals
    identity.py        config_hash: what makes two jobs the same job
    resume.py          skip_finished and ckpt_path=last, decided from the tracker's queries
    lightning.py       TrackerLogger: Lightning's metrics into the tracker's run

Importing this package imports neither MLflow nor Lightning; the classes do when they are used.
conf/logger/*.yaml name ssmoe_cli.tracking.MlflowTracker / NullTracker.
"""

from ssmoe_cli.tracking.base import NullTracker, Tracker
from ssmoe_cli.tracking.identity import VOLATILE_KEYS, config_hash, flatten
from ssmoe_cli.tracking.journal import OFFLINE_JOURNAL, SYNCED_JOURNAL, apply_record, find_journals, sync_journal
from ssmoe_cli.tracking.mlflow_tracker import MlflowTracker
from ssmoe_cli.tracking.resume import Checkpoint, finished_run, resolve_checkpoint, resume_tags
from ssmoe_cli.tracking.store import (
    DEFAULT_TRACKING_URI,
    get_or_create_experiment,
    open_store,
    resolve_tracking_uri,
    retry,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "OFFLINE_JOURNAL",
    "SYNCED_JOURNAL",
    "VOLATILE_KEYS",
    "Checkpoint",
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "apply_record",
    "config_hash",
    "find_journals",
    "finished_run",
    "flatten",
    "get_or_create_experiment",
    "open_store",
    "resolve_checkpoint",
    "resolve_tracking_uri",
    "resume_tags",
    "retry",
    "sync_journal",
]
