"""Output folders: every run and every sweep its own, created atomically (ssmoe_cli.outdir)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import FAST, cli_env

SYNTH = ["model=fcl", "data=synthetic", "model.hidden=[16]"]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ssmoe: error:")]


def test_runs_started_together_get_their_own_folders(tmp_path, run_cli):
    """Two runs whose folder names collide (as two started in the same second do: the default names
    the folder after the time to the second) each claim their own folder and write only there."""
    same = "hydra.run.dir=${unique_dir:logs/same}"  # both ask for one name: one must get logs/same_1
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ssmoe_cli", "train", *SYNTH, f"seed={seed}", same, "logger=none", *FAST],
            cwd=tmp_path,
            env=cli_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    folders = sorted(tmp_path.glob("logs/same*"))
    assert [f.name for f in folders] == ["same", "same_1"]
    seeds = set()
    for folder in folders:
        assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "model.safetensors").is_file()
        seeds.add(
            next(
                line
                for line in (folder / ".hydra" / "config.yaml").read_text().splitlines()
                if line.startswith("seed:")
            )
        )
        log = (folder / "train.log").read_text()  # one run's whole log, not two interleaved or cut
        assert log.count("GPU available") == 1 and log.count("`Trainer.fit` stopped") == 1, log
    assert seeds == {"seed: 1", "seed: 2"}
    # The default folders (and sweep folders) are claimed the same way.
    hydra_cfg = run_cli("train", "--cfg", "hydra").stdout
    assert hydra_cfg.count("${unique_dir:${paths.log_dir}/${task_name}/") == 2, hydra_cfg


@pytest.mark.slow
def test_ddp_workers_write_into_the_run_folder_without_lightning_advice(run_cli, tmp_path):
    proc = run_cli(
        "train", "trainer=ddp", *SYNTH, "trainer.max_epochs=1", "trainer.enable_progress_bar=false", *FAST[1:]
    )
    (folder,) = tmp_path.glob("logs/train/runs/*")  # Lightning re-runs the command: no second folder
    assert (folder / "train.log").is_file() and (folder / "train_ddp_process_1.log").is_file()
    assert "self.log('train/" not in proc.stderr  # epoch-level train metrics are synced across processes


def test_claimed_folder_names_follow_the_taken_ones(tmp_path):
    from ssmoe_cli.outdir import claim_dir

    base = str(tmp_path / "runs" / "2026-01-01_00-00-00")
    assert [claim_dir(base) for _ in range(3)] == [base, f"{base}_1", f"{base}_2"]


def test_an_output_folder_that_cannot_be_created_is_one_line(run_cli, tmp_path):
    proc = run_cli("train", *SYNTH, "hydra.run.dir=/proc/nope", *FAST, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert errors(proc.stderr) == [
        "ssmoe: error: cannot create the output folder /proc/nope: No such file or directory; choose a writable "
        "place with hydra.run.dir=DIR (one run) or hydra.sweep.dir=DIR (a sweep), or run from a writable directory"
    ]
    assert not (tmp_path / "mlflow.db").exists()
