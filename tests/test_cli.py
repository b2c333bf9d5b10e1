"""The `ssmoe` command itself: help, version, dispatch, Hydra's options, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import ssmoe_cli


def test_help_lists_commands_without_heavy_imports():
    code = (
        "import sys, ssmoe_cli.cli as c; rc = c.main(['--help']);"
        "heavy = [m for m in ('torch', 'mlflow', 'hydra', 'pytorch_lightning', 'rich') if m in sys.modules];"
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "usage: ssmoe" in out
    assert "HEAVY []" in out


def test_version_and_unknown_command(run_cli):
    assert run_cli("--version").stdout.strip() == f"ssmoe {ssmoe_cli.__version__}"
    proc = run_cli("frobnicate", check=False)
    assert proc.returncode == 2
    assert "unknown command 'frobnicate'" in proc.stderr and "Traceback" not in proc.stderr


def test_train_help_lists_config_groups(run_cli):
    out = run_cli("train", "--help").stdout
    # "group: option, option" lines; options get added over time, so each group must hold at least these.
    listed = {line.split(": ")[0]: set(line.split(": ", 1)[1].split(", ")) for line in out.splitlines() if ": " in line}
    for group, options in {
        "data": {"digits", "fashion_mnist", "mnist", "synthetic"},
        "model": {"fcl", "sgmoe", "ptsne_moe"},
        "baseline": {"lenet_300_100"},
        "trainer": {"debug", "default", "ddp"},
        "logger": {"mlflow", "mlflow_server", "none"},
    }.items():
        assert options <= listed.get(group, set()), (group, listed.get(group))


def test_cfg_job_composes_overrides(run_cli):
    out = run_cli("train", "--cfg", "job", "model=fcl", "data=digits", "model.hidden=[32]", "seed=7").stdout
    assert "ssmoe_cli.data.digits.Digits" in out
    assert "seed: 7" in out
    assert "- 32" in out


def test_unknown_option_fails_with_hydra_message(run_cli):
    proc = run_cli("train", "model=does_not_exist", check=False)
    assert proc.returncode != 0
    assert "Could not find 'model/does_not_exist'" in proc.stderr


def test_scheduler_group_defaults_to_constant_and_cosine_follows_max_epochs(run_cli):
    out = run_cli("train", "--cfg", "job", "--resolve", "model=fcl").stdout
    assert "scheduler: {}" in out
    out = run_cli("train", "--cfg", "job", "--resolve", "model=fcl", "scheduler=cosine", "trainer.max_epochs=7").stdout
    assert "CosineAnnealingLR" in out and "T_max: 7" in out


def test_only_the_program_itself_tunes_and_freezes_the_collector(monkeypatch, capsys):
    # main() as the process's entry point raises the GC thresholds (imports ahead) and freezes its objects
    # before exit (which then skips full collections over them); a caller passing argv keeps its own GC.
    import gc

    from ssmoe_cli import cli

    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "set_threshold", lambda *t: calls.append(t))
    assert cli.main(["--version"]) == 0 and calls == []
    monkeypatch.setattr(sys, "argv", ["ssmoe", "--version"])
    assert cli.main() == 0 and calls == [(10_000, 50, 50), "freeze"]
    monkeypatch.setattr(sys, "argv", ["ssmoe", "nope"])
    assert cli.main() == 2 and calls[2:] == [(10_000, 50, 50), "freeze"]
    assert f"ssmoe {ssmoe_cli.__version__}" in capsys.readouterr().out
