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


def test_pyproject_lists_every_package_and_an_spdx_license():
    """Every package under src/ is in the explicit `packages` list (a missing one installs without
    it), and the license is an SPDX string (the TOML-table form makes pip warn on every install)."""
    import warnings

    from setuptools import find_packages
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message) for w in caught]
    assert dist.metadata.license_expression == "MIT"
    expected = {f"ssmoe_cli.{p}" for p in find_packages(ROOT / "src" / "ssmoe_cli")} | {"ssmoe_cli"}
    assert expected <= set(dist.packages), sorted(expected - set(dist.packages))
