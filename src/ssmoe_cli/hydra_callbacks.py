"""Hydra callbacks of `ssmoe train` (configured in conf/hydra/default.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.tracking import MlflowTracker


class PrepareExperiment(Callback):
    """Check the sweep's objective and create the MLflow experiment once, before a multirun launches
    its jobs.

    Parallel jobs on one SQLite store then only read it instead of racing to create it and to
    migrate the schema (the "database is locked" failure).
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from ssmoe_cli.train.app import check_objective

        try:  # what would fail every job fails the sweep once, with one line, before any job starts
            check_objective(config)
            # No job's output directory exists yet: a tracker with an offline journal must not resolve it.
            overrides = {"offline_dir": None} if "offline_dir" in config.logger else {}
            tracker = instantiate(config.logger, **overrides)
            if isinstance(tracker, MlflowTracker):
                tracker.experiment_id()  # also: a store that cannot be opened
        except SsmoeError as exc:
            print(f"ssmoe: error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)


class SweepSummary(Callback):
    """At the end of a multirun: name the jobs that failed and exit non-zero if any did."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from ssmoe_cli.tracking import OFFLINE_JOURNAL
        from ssmoe_cli.train.app import FAILED_MARKER

        sweep_dir = Path(config.hydra.sweep.dir)
        for journal in sorted(sweep_dir.glob(f"*/{OFFLINE_JOURNAL}")):
            print(
                f"ssmoe: warning: job #{journal.parent.name} lost the MLflow server; re-log its records with: "
                f"ssmoe sync {journal.parent}",
                file=sys.stderr,
            )
        failed = sorted(
            sweep_dir.glob(f"*/{FAILED_MARKER}"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
        )
        jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()] if sweep_dir.is_dir() else []
        if not failed:
            print(f"ssmoe: sweep finished: {len(jobs)} job(s), none failed ({sweep_dir})")
            return
        print(f"ssmoe: sweep finished: {len(failed)} of {len(jobs)} job(s) FAILED ({sweep_dir}):", file=sys.stderr)
        for marker in failed:
            overrides = marker.parent / ".hydra" / "overrides.yaml"
            what = (
                " ".join(line.removeprefix("- ").strip() for line in overrides.read_text().splitlines())
                if overrides.is_file()
                else ""
            )
            print(f"  job #{marker.parent.name} [{what}]: {marker.read_text().strip()}", file=sys.stderr)
        sys.exit(1)
