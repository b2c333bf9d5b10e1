"""Output folders: every run and every sweep its own, created atomically (ssmoe_cli.outdir)."""

from __future__ import annotations

from conftest import FAST, errors, start_train

SYNTH = ["model=fcl", "data=synthetic", "model.hidden=[16]"]


def test_runs_started_together_get_their_own_folders(tmp_path, run_cli):
    """Two runs whose folder names collide (as two started in the same second do: the default names
    the folder after the time to the second) each claim their own folder and write only there."""
    same = "hydra.run.dir=${unique_dir:logs/same}"  # both ask for one name: one must get logs/same_1
    started = [start_train(tmp_path, *SYNTH, f"seed={seed}", same, "logger=none", *FAST) for seed in (1, 2)]
    for proc, err in started:
        assert proc.wait(timeout=300) == 0, err.read_text()
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
