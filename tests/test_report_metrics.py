"""ssmoe_cli.metrics, the one home of metric names: it agrees with the documented contract."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ssmoe_cli import metrics

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _documented() -> set[str]:
    """The metric names of docs/configuration.md's contract table (`a`, `b` in its first column)."""
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index("## The metrics contract") :].split("\n\n", 3)[2]
    names: set[str] = set()
    for line in table.splitlines()[2:]:
        names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_every_documented_metric_has_a_spec_and_no_spec_is_undocumented():
    documented = _documented()
    assert "train/aux/<name>" in documented
    assert documented - {"train/aux/<name>"} == set(metrics.BY_NAME)
    assert metrics.get(metrics.aux_loss("balance")).name == "train/aux/balance"


def test_lists_name_known_metrics_and_importing_is_light():
    for names in (metrics.SUMMARY, metrics.REPORT, metrics.LOAD):
        assert set(names) <= set(metrics.BY_NAME)
    assert metrics.get(metrics.TEST_ACC).format(0.87784) == "0.8778"
    assert metrics.get(metrics.RATIO_VS_FCL).format(8.08) == "8.08x"
    code = "import sys, ssmoe_cli.metrics; print(sorted(m for m in ('torch', 'mlflow', 'rich') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
