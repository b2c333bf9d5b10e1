"""`ssmoe sync`: re-log what a run kept offline because its MLflow tracking server went away.

    ssmoe sync logs/train/runs/2026-11-23_19-08-20           # the run's output directory
    ssmoe sync logs/train/multiruns/2026-11-23_19-08-20      # every job of a sweep (its direct subfolders)
    ssmoe sync RUN_DIR --tracking-uri http://127.0.0.1:5001  # the store moved

`ssmoe train` writes <output dir>/mlflow_offline.jsonl from the first write the server refused (the
run itself was created on the server when training started) and tells you to run this. Each journal
is replayed into its run, then renamed mlflow_offline.synced.jsonl so that it is never replayed twice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssmoe_cli.errors import SsmoeError


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ssmoe sync", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help="a run's (or sweep's) output directory, or a journal file")
    parser.add_argument("--tracking-uri", help="re-log into this store instead of the one the run started in")
    opts = parser.parse_args(args)
    try:
        from ssmoe_cli.tracking import find_journals, sync_journal

        for journal in find_journals(opts.target):
            run_id, records = sync_journal(journal, opts.tracking_uri)
            print(f"ssmoe sync: re-logged {records} records of {journal.parent} into MLflow run {run_id}")
    except SsmoeError as exc:
        print(f"ssmoe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
