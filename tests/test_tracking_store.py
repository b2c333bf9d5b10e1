"""The MLflow store through the real CLI: created once by concurrent runs, and one line (exit 2, at once)
for a store that cannot be created, written or read."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAST, cli_env, errors, search_runs, start_train

SYNTH = ["model=fcl", "data=synthetic", "model.hidden=[16]"]


def train(cwd: Path, *args: str, env_from: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssmoe_cli", "train", *args],
        cwd=cwd,
        env=cli_env(env_from or cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can create files in. Root writes through permission bits, so as root this is
    /proc (whose entries no user creates), which fails the same way for the store."""
    if os.geteuid() == 0:
        yield Path("/proc")
        return
    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    yield path
    path.chmod(0o755)


@pytest.mark.slow
def test_two_runs_creating_a_new_store_at_once_both_finish(tmp_path):
    """Both find no mlflow.db; without one creator at a time one died with `table ... already exists`."""
    started = [start_train(tmp_path, *SYNTH, f"seed={seed}", f"hydra.run.dir=run{seed}", *FAST) for seed in (1, 2)]
    for proc, err in started:
        assert proc.wait(timeout=300) == 0, err.read_text()
        assert "Traceback" not in err.read_text()
    runs = search_runs(tmp_path)
    assert len(runs) == 2 and set(runs.status) == {"FINISHED"} and set(runs["params.seed"]) == {"1", "2"}


def test_processes_opening_a_new_store_at_once_create_it_once(tmp_path):
    """The store's creation itself, three processes started together (without the lock, two of three
    died here with `table _alembic_tmp_tags already exists` or an alembic CommandError)."""
    code = (
        "import sys; from ssmoe_cli.tracking import open_store, get_or_create_experiment;"
        "c = open_store(sys.argv[1]); print(get_or_create_experiment(c, 'ssmoe'))"
    )
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 3, [err for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, the same id for all


def test_a_read_only_working_directory_is_one_line(tmp_path, read_only_dir):
    start = time.time()
    proc = train(read_only_dir, *SYNTH, f"hydra.run.dir={tmp_path / 'out'}", *FAST, env_from=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = errors(proc.stderr)
    assert f"cannot create the MLflow store {read_only_dir / 'mlflow.db'}" in line
    assert "logger.tracking_uri=" in line and "writable directory" in line
    assert time.time() - start < 60  # not MLflow's ~110 s of retries
    assert not list((tmp_path / "out").glob("checkpoints/*"))  # nothing trained


def test_a_store_in_a_read_only_folder_is_one_line_at_once(run_cli, tmp_path, read_only_dir):
    db = read_only_dir / "sub" / "mlflow.db"
    start = time.time()
    proc = run_cli("train", *SYNTH, f"logger.tracking_uri=sqlite:///{db}", *FAST, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = errors(proc.stderr)
    assert f"cannot create the MLflow store {db}" in line
    assert time.time() - start < 60


def test_a_corrupt_store_is_one_line(run_cli, tmp_path):
    (tmp_path / "mlflow.db").write_text("these are notes, not a database\n")
    proc = run_cli("train", *SYNTH, *FAST, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert errors(proc.stderr) == [
        f"ssmoe: error: {tmp_path / 'mlflow.db'} is not an SQLite database, so not an MLflow store; move it "
        "away, or point logger.tracking_uri (or MLFLOW_TRACKING_URI) at another store"
    ]
    assert (tmp_path / "mlflow.db").read_text() == "these are notes, not a database\n"  # left as it was


def test_open_store_refuses_what_it_cannot_open(tmp_path):
    from ssmoe_cli.errors import SsmoeError
    from ssmoe_cli.tracking import open_store

    (tmp_path / "notes.db").write_text("text")
    with pytest.raises(SsmoeError, match="is not an SQLite database"):
        open_store(f"sqlite:///{tmp_path / 'notes.db'}")
    (tmp_path / "a-folder.db").mkdir()
    with pytest.raises(SsmoeError, match="is not a file"):
        open_store(f"sqlite:///{tmp_path / 'a-folder.db'}")
    client = open_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # a new store, folder included
    assert client.search_experiments()[0].name == "Default"
