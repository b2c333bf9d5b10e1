"""`ssmoe report` on a real sweep through the CLI: one row per configuration, in an 80-column terminal.

The sweep varies model.hidden, a key no fixed list of grouping keys knew: runs that differ in it
are different configurations, never repeats of one seed. One sweep (4 tiny jobs) serves the module.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, cli_env

EXPERIMENT = "grid"


def ssmoe(cwd: Path, *args: str, columns: int = 250) -> subprocess.CompletedProcess:
    env = cli_env(cwd)
    env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "ssmoe_cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """`ssmoe train -m model=fcl model.hidden=[300,100],[500,300] seed=0,1 data=digits` into experiment 'grid'."""
    root = tmp_path_factory.mktemp("report_sweep")
    args = ["train", "-m", "model=fcl", "model.hidden=[300,100],[500,300]", "seed=0,1", "data=digits", *FAST]
    proc = ssmoe(root, *args, f"logger.experiment_name={EXPERIMENT}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_runs_differing_in_any_config_key_are_separate_rows(sweep):
    proc = ssmoe(sweep, "report", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["group_keys"] == ["model", "prune", "params.model.hidden"]
    rows = [(g["label"], g["runs"], g["seeds"]) for g in data["groups"]]
    assert rows == [
        ("fcl / none / hidden=[300, 100]", 2, ["0", "1"]),
        ("fcl / none / hidden=[500, 300]", 2, ["0", "1"]),
    ]
    assert data["set_aside_runs"] == []
    nonzero = [g["metrics"]["params/nonzero"]["mean"] for g in data["groups"]]
    assert nonzero == [64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10, 64 * 500 + 500 + 500 * 300 + 300 + 3010]
    # No -e: the one experiment with runs is read, and stderr says which (no "no experiment named 'ssmoe'").
    assert proc.stderr.startswith(f"ssmoe report: reading experiment '{EXPERIMENT}'")


def test_80_column_terminal_shows_whole_headers_and_one_line_cells(sweep):
    proc = ssmoe(sweep, "report", "--intervals", columns=80)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # Every line fits, but those that end in a path (left whole for copying; the terminal folds them).
    assert max(len(line) for line in lines if str(sweep) not in line) <= 80
    assert "…" not in proc.stdout  # rich's mark of a cut header or cell
    assert all(line[-1] in "┃│┓┩┘" for line in lines if line[:1] in "┃│┏┡└")  # no table cropped at the edge
    header_cells = {c.strip() for line in lines if line.startswith("┃") for c in line.strip("┃").split("┃")}
    for label in ("configuration", "runs", "test acc %", "nonzero", "active/sample", "vs FCL", "epoch s"):
        assert label in header_cells
    # Each row's accuracy cell (mean ± std) and interval cell sit whole on one line, within [0, 100].
    mean_std = [m for line in lines for m in re.findall(r"│ +(\d+\.\d\d ± \d+\.\d\d) │", line)]
    assert len(mean_std) >= 2
    intervals = re.findall(r"\[(\d+\.\d\d), (\d+\.\d\d)\]", proc.stdout)
    assert intervals and all(0 <= float(lo) <= float(hi) <= 100 for lo, hi in intervals)
    assert "95% confidence intervals over seeds" in proc.stdout
    # Without --intervals: the compact tables only, and a pointer to the option.
    compact = ssmoe(sweep, "report", "-e", EXPERIMENT, columns=80)
    assert "confidence intervals over seeds" not in compact.stdout and "--intervals" in compact.stdout
