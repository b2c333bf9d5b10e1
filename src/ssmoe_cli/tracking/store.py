"""The MLflow store: where runs live (URI resolution), experiment creation, and retries for the
errors that concurrent SQLite writers cause ("database is locked")."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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


def get_or_create_experiment(client: Any, name: str) -> str:
    """The id of experiment `name`, created if missing (safe when parallel jobs race to create it)."""

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
