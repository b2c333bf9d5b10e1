"""SIGTERM ends a job cleanly: the run is recorded KILLED, the last checkpoint is kept, exit status 143.

SIGTERM is how SLURM (scancel, preemption, the time limit), Kubernetes and most schedulers stop a
job. Python's default is to die on the spot (an MLflow run left RUNNING forever), and Lightning's
own handler ends `trainer.fit` with a SystemExit whose status is 0, so a scheduler records success.

One mechanism for every phase of a job (`sigterm_ends_job`, entered once around the whole job):

- outside training (building, the model's preparation such as t-SNE pretraining, testing,
  measuring) the signal raises `Terminated` at once, as Ctrl-C raises KeyboardInterrupt;
- inside `trainer.fit` (`deferred`) it only sets a flag: Lightning, whose handler calls this one
  too, stops at the end of the current batch (all DDP ranks at the same batch) and raises its
  SIGTERMException, which leaves `deferred` as `Terminated`. The checkpoint of the last completed
  epoch stays as it is: resuming from it (`ckpt_path=last`) repeats the interrupted epoch and
  reaches exactly the result of an uninterrupted run, which a mid-epoch checkpoint would not.

The job ends its run KILLED with the reason; the app prints one line and exits with 128 + 15 (in a
sweep, the job hands in its outcome instead and the process's later jobs stop at once).
Handlers found in place (submitit's, in a SLURM job) are restored when the job ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM: 143


class Terminated(BaseException):
    """The job was asked to stop (SIGTERM). A BaseException, as KeyboardInterrupt is, so that no
    `except Exception` on the way (a retry loop, a library) swallows it."""

    exit_status = EXIT_STATUS

    def __init__(self, phase: str = "") -> None:
        self.reason = f"terminated by SIGTERM {phase}".strip()  # the run's `error` tag
        self.outcome = ""  # what became of the run and its checkpoint, told by the job (see outcome())
        super().__init__(self.reason)

    def __str__(self) -> str:
        return f"{self.reason}; {self.outcome}" if self.outcome else self.reason


def outcome(run_id: str | None, checkpoint: Path | None) -> str:
    """The rest of the line after the reason: the run's state, and how to continue."""
    if checkpoint is None or not checkpoint.is_file():
        return "the MLflow run is KILLED (no checkpoint yet: run it again)" if run_id else "no checkpoint yet"
    if run_id:  # ckpt_path=last finds it through the run
        return f"the MLflow run is KILLED, its checkpoint {checkpoint} is kept: continue with ckpt_path=last"
    return f"its checkpoint {checkpoint} is kept: continue with ckpt_path={checkpoint}"


class _State:
    stopped = False  # this process was sent SIGTERM in an earlier job: a sweep's later jobs do not start
    received = False  # a SIGTERM arrived during this job
    raised = False  # Terminated was raised: later signals must not interrupt the cleanup
    deferring = 0  # inside trainer.fit: only record
    phase = ""  # what the job was doing, for the message ("while preparing the model")


_state = _State()


def received() -> bool:
    """Whether this job has been sent SIGTERM."""
    return _state.received


def _on_sigterm(signum: int, frame: Any) -> None:
    _state.received = _state.stopped = True
    if _state.deferring or _state.raised:
        return
    _state.raised = True
    raise Terminated(_state.phase)


@contextlib.contextmanager
def sigterm_ends_job() -> Iterator[None]:
    """Within: SIGTERM raises Terminated (or, inside `deferred`, stops training at the next batch).

    A job that starts after an earlier job of this process was sent SIGTERM (a sweep run by Hydra's
    basic launcher) raises Terminated at once: the scheduler asked the whole process to stop."""
    if _state.stopped:
        raise Terminated("before this job started")
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread; jobs run there
        return
    previous = signal.getsignal(signal.SIGTERM)
    _state.received = _state.raised = False
    _state.deferring, _state.phase = 0, ""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Name what the job does meanwhile, for the message: `with phase("while preparing the model")`."""
    outer, _state.phase = _state.phase, name
    try:
        yield
    finally:
        _state.phase = outer


@contextlib.contextmanager
def deferred(name: str = "during training") -> Iterator[None]:
    """Around `trainer.fit`: a SIGTERM stops training at a batch boundary, then leaves as Terminated."""
    _state.deferring += 1
    try:
        with phase(name):
            yield
    except SystemExit:
        # Lightning's SIGTERMException (a SystemExit with status 0) or its exit after an interrupt.
        if not _state.received:
            raise
        _state.raised = True
        raise Terminated(name) from None
    finally:
        _state.deferring -= 1
    if _state.received:  # arrived after the last batch: training is complete, but the job stops here
        _state.raised = True
        raise Terminated(name)


def ending() -> None:
    """The job is closing its run (after success or any exit): from now on a SIGTERM is only recorded,
    so that it cannot interrupt the cleanup half way and leave the run RUNNING. A sweep's later jobs
    still stop (see sigterm_ends_job)."""
    _state.raised = True


def redeliver_if_received() -> None:
    """A SIGTERM that arrived inside `deferred` before Lightning installed its own handler would go
    unnoticed by Lightning: send it again, now that Lightning listens (see callbacks.StopOnSigterm)."""
    if _state.received and not _state.raised:
        os.kill(os.getpid(), signal.SIGTERM)
