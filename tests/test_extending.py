"""docs/extending.md's worked example, run exactly as written: its files, then its command."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, search_runs

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.mark.slow
def test_worked_example_runs_as_documented(tmp_path):
    text = DOC.read_text()
    for block in re.findall(r"```(?:python|yaml)\n(# file: (\S+)\n.*?)```", text, flags=re.S):
        content, name = block
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    for name in ("my_gates.py", "my_topologies.py", "my_pruning.py"):
        assert (tmp_path / name).is_file(), name
    for name in ("gating/cosine.yaml", "topology/ring.yaml", "prune/random.yaml"):
        assert (tmp_path / "my_conf" / name).is_file(), name
    command = next(line for line in text.splitlines() if line.startswith("PYTHONPATH=. ssmoe train"))
    words = shlex.split(command)
    env = {**cli_env(tmp_path), "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [*words[2:], "trainer.enable_progress_bar=false", "timing.repeats_b1=5", "timing.repeats_b256=3"]
    proc = subprocess.run(
        [sys.executable, "-m", "ssmoe_cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    run = search_runs(tmp_path).iloc[0]
    assert run.status == "FINISHED"
    assert (run["tags.gating"], run["tags.topology"], run["tags.prune"]) == ("cosine", "ring", "random")
    assert run["metrics.test/acc"] > 0.3
    assert run["metrics.prune/sparsity"] == pytest.approx(0.9, abs=1e-3)  # the schedule's default target
