"""The MLflow store: where runs live (URI resolution), opening it (a local SQLite file is checked, then
created or migrated under a lock), experiment creation, and retries for the errors that concurrent
SQLite writers cause ("database is locked").

Why the lock: MLflow creates a new SQLite store's tables on first use, and two processes that both find
an empty file both create them; one dies with "table ... already exists". Why the checks: MLflow retries
opening a store it cannot open for ~110 s before its traceback, whatever the reason; a store that cannot
be created, read or written is a user's fix, said in one line at once.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ssmoe_cli.errors import SsmoeError

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


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// tracking URI (None for a server or an in-memory store)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


_HOW = (
    "run from a writable directory, or set logger.tracking_uri=sqlite:////WRITABLE/DIR/mlflow.db "
    "(or MLFLOW_TRACKING_URI)"
)


def check_sqlite_store(db: Path, writable: bool = True) -> None:
    """Fail with one line if the SQLite store `db` cannot be created, read or (if `writable`) written:
    SQLite needs the file and, for its journal, its folder writable. Probes by trying (root included)."""
    if db.exists():
        if not db.is_file():
            raise SsmoeError(f"the MLflow store {db} is not a file; {_HOW}")
        try:
            with db.open("r+b" if writable else "rb") as fh:  # nothing is written
                head = fh.read(16)
        except OSError as exc:
            how = "for writing" if writable else "for reading"
            raise SsmoeError(f"cannot open the MLflow store {db} {how} ({exc.strerror}); {_HOW}") from None
        if head and head != b"SQLite format 3\x00":
            raise SsmoeError(
                f"{db} is not an SQLite database, so not an MLflow store; move it away, or point "
                "logger.tracking_uri (or MLFLOW_TRACKING_URI) at another store"
            )
        if not writable:
            return
    directory = db.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        what = "create" if not db.exists() else "write to"
        raise SsmoeError(
            f"cannot {what} the MLflow store {db}: its folder {directory} is not writable ({exc.strerror}); {_HOW}"
        ) from None


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on `directory` itself (no lock file left behind), released on exit. Where the
    file system refuses flock (some network file systems) the block runs unlocked: retries remain."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def open_store(uri: str | None = None, writable: bool = True) -> Any:
    """An MlflowClient on the store at `uri` (resolved as resolve_tracking_uri does), ready to use.

    A local SQLite store is checked first (SsmoeError, one line, if it cannot be created, read or
    written, or is not an SQLite file), then created or migrated by one process at a time.
    writable=False (a reader such as `ssmoe report`): an existing store only needs to be readable. A
    server is not contacted here (MlflowTracker.check_server does that, with its own message).
    """
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(uri)
    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    check_sqlite_store(db, writable)
    with directory_lock(db.parent):
        try:  # the client builds MLflow's store (tables created or migrated) inside the lock
            client = retry(lambda: MlflowClient(tracking_uri=uri))
            retry(lambda: client.search_experiments(max_results=1))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise SsmoeError(f"cannot open the MLflow store {db}: {first}; {_HOW}") from None
    return client


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
