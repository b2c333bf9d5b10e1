"""Shared fixtures: run the real `ssmoe` CLI in a subprocess inside a temp dir, read MLflow back."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Small, fast settings for CLI runs: a few steps, no progress bar.
FAST = ["trainer=debug", "timing.repeats_b1=5", "timing.repeats_b256=3"]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs -n 2), start the long tests first: a worker that picks up a
    minute-long CLI test near the end would leave the other worker idle while it finishes. Long here
    means marked slow or running the CLI (run_cli, or a store for a CLI run: mlflow_db, mlflow_server).
    The tests that share a module-scoped fixture (several CLI commands run at once, then checked one
    test each) stay together: one xdist group, at the rank of their longest member. Split by the
    slow-first order or between the workers, each part would run the fixture's commands again
    (measured: the faults of test_robustness.py four times, 45 s each). Every worker sorts the same
    collection the same way (a stable sort), as xdist requires. A plain `pytest` run keeps the files'
    order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    cli = {"run_cli", "mlflow_db", "mlflow_server"}

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if cli & set(getattr(item, "fixturenames", ())) else 2

    def shared_fixture(item: pytest.Item) -> str | None:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.items() if info is not None else ()
        names = sorted(name for name, fixturedefs in defs if fixturedefs and fixturedefs[-1].scope == "module")
        return f"{item.nodeid.split('::')[0]}::{names[0]}" if names else None

    group: dict[int, str] = {}
    for item in items:
        name = shared_fixture(item)
        if name is not None and item.get_closest_marker("xdist_group") is None:
            group[id(item)] = name
            item.add_marker(pytest.mark.xdist_group(name))
    group_rank: dict[str, int] = {}
    for item in items:
        if id(item) in group:
            group_rank[group[id(item)]] = min(group_rank.get(group[id(item)], 2), rank(item))
    items.sort(key=lambda item: group_rank[group[id(item)]] if id(item) in group else rank(item))


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to other processes busy on the machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # never touch the user's cache
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run `python -m ssmoe_cli ARGS` with the temp dir as working directory."""

    def run(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "ssmoe_cli", *args],
            cwd=tmp_path,
            env=cli_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ssmoe {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, created (schema migrated) once per session: MLflow takes seconds
    to create one, which every test that trains in a fresh folder would otherwise pay again."""
    from ssmoe_cli.tracking import open_store

    db = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    open_store(f"sqlite:///{db}")
    return db


@pytest.fixture
def mlflow_db(tmp_path: Path, store_template: Path) -> Path:
    """tmp_path/mlflow.db, an existing empty store (as after a user's first run). Only for tests that are
    not about creating the store: those (parallel jobs racing to create it, no store touched) start without."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(store_template, db)
    return db


def run_parallel(
    *commands: tuple[Path, list[str]], check: bool = True, timeout: int = 300
) -> list[subprocess.CompletedProcess]:
    """Run `python -m ssmoe_cli ARGS` for each (cwd, ARGS) at once and wait for all, failing as run_cli
    does (check): a test's independent runs overlap their imports and set-up instead of queueing on 2 cores."""
    started = []
    for cwd, args in commands:
        out, err = (cwd / f"{name}-{time.monotonic_ns()}" for name in ("stdout", "stderr"))
        with out.open("w") as out_fh, err.open("w") as err_fh:  # files: a full pipe would block a process
            proc = subprocess.Popen(
                [sys.executable, "-m", "ssmoe_cli", *args], cwd=cwd, env=cli_env(cwd), stdout=out_fh, stderr=err_fh
            )
        started.append((proc, args, out, err))
    done = []
    try:
        for proc, args, out, err in started:
            proc.wait(timeout=timeout)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())
            if check and proc.returncode != 0:
                said = f"{result.stdout}\n{result.stderr}"
                raise AssertionError(f"ssmoe {' '.join(args)} exited {proc.returncode}\n{said}")
            done.append(result)
    finally:
        for proc, *_ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def run_in_folders(
    root: Path, commands: dict[str, list[str]], store: Path | None = None
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Each named command in root/<name> (with a copy of `store` as its mlflow.db when given), all at
    once and unchecked: name -> (folder, completed process)."""
    import shutil

    for name in commands:
        (root / name).mkdir(exist_ok=True)
        if store is not None:
            shutil.copyfile(store, root / name / "mlflow.db")
    done = run_parallel(*((root / name, args) for name, args in commands.items()), check=False)
    return {name: (root / name, proc) for name, proc in zip(commands, done, strict=True)}


def errors(stderr: str) -> list[str]:
    """The `ssmoe: error:` lines of a command's stderr (each problem is exactly one such line)."""
    return [line for line in stderr.splitlines() if line.startswith("ssmoe: error:")]


def start_train(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """`ssmoe train ARGS` in the background in tmp_path; its stderr goes to a file (a full pipe would
    block it). Ctrl-C must reach it even where pytest itself runs in the background (ignoring SIGINT)."""
    err = tmp_path / f"stderr-{time.monotonic_ns()}"
    with err.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ssmoe_cli", "train", *args],
            cwd=tmp_path,
            env=cli_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=fh,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    return proc, err


def wait_for(proc: subprocess.Popen, found, what: str, timeout: float = 180):
    """Poll found() until it returns something truthy; fail if proc ends first or time runs out."""
    deadline = time.time() + timeout
    while not (hit := found()):
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)
    return hit


def search_runs(tmp_path: Path, experiment: str = "ssmoe"):
    """All runs of an experiment in the temp dir's default store, as a DataFrame."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time ASC"])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with its store in a temp dir; stop() kills it (SIGKILL, as a
    crash would), start() brings it back on the same port and store."""

    def __init__(self, root: Path, template: Path | None = None) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"
        if template is not None:  # an existing empty store: the server starts without creating one
            shutil.copyfile(template, root / "server.db")

    def start(self) -> MlflowServer:
        import urllib.request

        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--backend-store-uri", f"sqlite:///{self.root / 'server.db'}", "--workers", "1"]
        self.proc = subprocess.Popen(  # its own process group: stop() kills its workers with it
            cmd,
            cwd=self.root,
            env=cli_env(self.root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).close()
                return self
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail("mlflow server did not start")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its uvicorn workers
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path: Path, store_template: Path):
    server = MlflowServer(tmp_path, store_template).start()
    yield server
    server.stop()


def composed(*overrides: str, hydra: bool = False) -> dict:
    """The config `ssmoe train OVERRIDES` composes (as `--cfg job --resolve`; with hydra=True its
    `hydra` node too, as `--cfg hydra`), composed in-process: the CLI's own start-up is tested elsewhere."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "hydra.runtime.output_dir=/tmp"], return_hydra_config=True)
    if hydra:
        return OmegaConf.to_container(cfg.hydra)
    HydraConfig.instance().set_config(cfg)  # what a job sees: ${hydra:...} resolves
    try:
        keys = ("prune", "data", "trainer", "arch", "baseline")
        return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in keys}
    finally:
        HydraConfig.instance().cfg = None  # no later test of this process sees a Hydra job
