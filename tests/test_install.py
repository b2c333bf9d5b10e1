"""A non-editable install finds its configs from any working directory (pkg://ssmoe_cli.conf)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install_ships_configs(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert (target / "ssmoe_cli" / "conf" / "train.yaml").is_file()
    assert (target / "ssmoe_cli" / "conf" / "model" / "fcl.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import ssmoe_cli, sys; print(ssmoe_cli.__file__); from ssmoe_cli.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "--cfg", "job", "data=digits"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(target))  # the installed copy, not the source tree
    assert "ssmoe_cli.data.digits.Digits" in proc.stdout
