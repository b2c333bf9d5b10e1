"""How one statistic reads: a metric's mean, spread and interval as table text, and plain rows.

Shared by the terminal tables (report/terminal.py) and the file formats (report/render.py).
A fraction metric (test accuracy) reads in percent; "—" where no run logged the metric; "n=k/N"
where only k of a configuration's N runs did; a single value says that std and CI are n/a.
"""

from __future__ import annotations

import math

from ssmoe_cli.metrics import Metric
from ssmoe_cli.report.build import Report
from ssmoe_cli.report.claims import Findings, points
from ssmoe_cli.report.intervals import Summary
from ssmoe_cli.report.records import RunRecord

DASH = "—"


def fmt_value(spec: Metric, value: float) -> str:
    """One value in the report's unit: percent for fractions, thousands separators for counts."""
    if spec.kind == "fraction":
        return f"{100 * value:.2f}"
    if spec.kind == "count":
        return f"{value:,.0f}"
    if spec.kind == "ratio":
        return f"{value:.2f}x"
    return f"{value:.3g}"


def fmt_spread(spec: Metric, value: float) -> str:
    """A std or CI bound: the value's format without the unit suffix."""
    return fmt_value(spec, value).rstrip("x")


def _count(s: Summary, runs: int) -> str:
    return f" (n={s.n}/{runs})" if s.n < runs else ""


def mean_std(spec: Metric, s: Summary, runs: int) -> str:
    """`mean ± std`, the compact cell of the terminal table."""
    if s.n == 0 or s.mean is None:
        return DASH
    if s.std is None:
        return f"{fmt_value(spec, s.mean)} ({'1 seed' if runs == 1 else f'n=1/{runs}'})"
    return f"{fmt_value(spec, s.mean)} ± {fmt_spread(spec, s.std)}{_count(s, runs)}"


def interval(spec: Metric, s: Summary, runs: int) -> str:
    """`[low, high]`, the 95% CI cell (n/a below two values)."""
    if s.n == 0 or s.mean is None:
        return DASH
    if s.ci_low is None or s.ci_high is None:
        return "n/a"
    return f"[{fmt_spread(spec, s.ci_low)}, {fmt_spread(spec, s.ci_high)}]{_count(s, runs)}"


def full(spec: Metric, s: Summary, runs: int) -> str:
    """`mean ± std [low, high]`: the cell of the file formats."""
    if s.n == 0 or s.mean is None:
        return DASH
    if s.std is None or s.ci_low is None or s.ci_high is None:
        which = f"n={s.n}/{runs}" if runs > 1 else "1 seed"
        return f"{fmt_value(spec, s.mean)} ({which}: std/CI n/a)"
    ci = f"[{fmt_spread(spec, s.ci_low)}, {fmt_spread(spec, s.ci_high)}]"
    return f"{fmt_value(spec, s.mean)} ± {fmt_spread(spec, s.std)} {ci}{_count(s, runs)}"


def num(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return None if value is None or not math.isfinite(value) else value


def header(report: Report) -> list[str]:
    names = report.names
    return [*(names[k] for k in report.keys), "runs", "seeds", *(m.short for m in report.metrics)]


def body(report: Report) -> list[list[str]]:
    return [
        [
            *(DASH if v is None else v for _, v in g.key),
            str(len(g.runs)),
            " ".join(g.seeds) or DASH,
            *(full(m, g.summary(m.name), len(g.runs)) for m in report.metrics),
        ]
        for g in report.groups
    ]


def match_header(report: Report) -> list[str]:
    r = report.roles
    return [
        "matched setting",
        "paired seeds",
        f"acc {r.proposed}−{r.versus} (points) [95% CI]",
        "nonzero ratio",
        "Δ vs FCL",
    ]


def match_rows(f: Findings) -> list[list[str]]:
    rows = []
    for m in f.versus.matches:
        s = m.acc.summary
        if s.mean is None:
            acc = DASH
        elif s.ci_low is None or s.ci_high is None:
            acc = f"{s.mean:+.2f} (1 seed)"
        else:
            acc = f"{s.mean:+.2f} [{s.ci_low:+.2f}, {s.ci_high:+.2f}]"
        rows.append(
            [
                m.setting_label or "all",
                str(m.acc.n),
                acc,
                DASH if m.nonzero_ratio is None else f"{m.nonzero_ratio:.2f}x",
                DASH if m.ratio_diff is None else f"{m.ratio_diff:+.2f}",
            ]
        )
    return rows


def match_caption(report: Report) -> str:
    r = report.roles
    return (
        f"nonzero ratio: mean nonzero parameters of {r.versus} / {r.proposed} (above 1: {r.proposed} is smaller); "
        f"Δ vs FCL: compression/ratio_vs_fcl of {r.proposed} minus {r.versus}"
    )


def excluded_rows(runs: list[RunRecord]) -> list[dict[str, str]]:
    return [
        {
            "run": r.name or r.run_id,
            "status": r.status,
            "model": r.get("model") or DASH,
            "prune": r.get("prune") or DASH,
            "seed": r.seed or DASH,
            "error": r.tags.get("error", ""),
        }
        for r in runs
    ]


def intro(report: Report) -> list[str]:
    r = report.roles
    return [
        f"experiments: {', '.join(report.experiments)} — tracking: {report.tracking_uri}",
        "rows: configurations (every config key that differs, less the seed); "
        f"labels show {', '.join(report.names.values())}",
        f"roles: proposed {r.proposed.describe()}; dense {r.dense.describe()}; versus {r.versus.describe()} — "
        f"accuracy tolerance: {points(report.tolerance)}",
    ]
