"""The "Trade-off curves" section as rows, JSON and terminal tables (report/render.py and terminal.py call it).

Accuracy cells read in percent: "88.90 [88.65, 89.15]" (mean [95% CI over seeds]) in files, "88.90 ±0.25"
(mean ± half the CI) in the terminal, where the columns must fit the width.
"""

from __future__ import annotations

import math
from typing import Any

from ssmoe_cli.metrics import TEST_ACC, VAL_ACC, get
from ssmoe_cli.report.cells import DASH, fmt_value, num
from ssmoe_cli.report.claims import points
from ssmoe_cli.report.frontier import X_METRICS, Matched, Point, Series
from ssmoe_cli.report.frontier_analysis import Tradeoff
from ssmoe_cli.report.frontier_ratios import NOUN, Ratio, interval_text, ratio_text
from ssmoe_cli.report.intervals import Paired, Summary

ACCS = (VAL_ACC, TEST_ACC)


def context_label(t: Tradeoff, names: dict[str, str]) -> str:
    return t.context_label(names)


def intro(t: Tradeoff) -> str:
    level = "—" if t.level is None else f"{100 * t.level:.2f}%"
    ref = t.reference.label if t.reference is not None else "none"
    return (
        f"series: configurations that differ only in their budget, largest first; accuracy level A = the dense "
        f"reference's mean validation accuracy - {points(t.tolerance)} = {level} (reference: {ref}); every choice "
        "is made on validation accuracy, test accuracy is reported"
    )


def acc_cell(s: Summary, compact: bool = False) -> str:
    if s.mean is None:
        return DASH
    if s.ci_low is None or s.ci_high is None:
        return f"{100 * s.mean:.2f} (1 seed)"
    if compact:
        return f"{100 * s.mean:.2f} ±{100 * (s.half_width or 0.0):.2f}"
    return f"{100 * s.mean:.2f} [{100 * s.ci_low:.2f}, {100 * s.ci_high:.2f}]"


def x_cell(p: Point, metric: str) -> str:
    s = p.summary(metric)
    return DASH if s.mean is None else fmt_value(get(metric), s.mean)


def _budget_key(t: Tradeoff) -> str | None:
    """The one budget key every point is set by, if there is one (its values alone then fill the column)."""
    keys = {k for s in t.series for p in s.points for k, v in p.budget if v is not None}
    return keys.pop() if len(keys) == 1 else None


def _names(t: Tradeoff) -> dict[str, str]:
    return dict(t.series[0].points[0].group.names) if t.series else {}


def budget_cell(t: Tradeoff, p: Point) -> str:
    key = _budget_key(t)
    return next((str(v) for k, v in p.budget if k == key), DASH) if key else p.budget_label(_names(t))


def series_header(t: Tradeoff) -> list[str]:
    key = _budget_key(t)
    budget = _names(t).get(key, key.rsplit(".", 1)[-1]) if key else "budget"
    return ["series", budget, *(get(m).short for m in X_METRICS), "val acc %", "test acc %", "seeds"]


def series_rows(t: Tradeoff, compact: bool = False) -> list[list[str]]:
    rows = []
    for s in t.series:
        for i, p in enumerate(s.points):
            rows.append(
                [
                    s.label if i == 0 else "",
                    budget_cell(t, p),
                    *(x_cell(p, m) for m in X_METRICS),
                    *(acc_cell(p.summary(y), compact) for y in ACCS),
                    str(p.summary(VAL_ACC).n or p.summary(TEST_ACC).n),
                ]
            )
    return rows


def frontier_rows(t: Tradeoff, compact: bool = False) -> list[list[str]]:
    """One row per x metric: the Pareto points (chosen on validation accuracy), fewest x first."""
    rows = []
    for x, pts in t.frontier.items():
        text = "; ".join(f"{p.group.label}: {x_cell(p, x)}, val {acc_cell(p.summary(VAL_ACC), compact)}" for p in pts)
        rows.append([get(x).short, text or DASH])
    return rows


RATIO_HEADER = ["against", "on", "ratio", "95% CI", "verdict"]


def ratio_rows(t: Tradeoff) -> list[list[str]]:
    rows = []
    for r in t.ratios:
        value = DASH if r.low is None or r.high is None else ratio_text(r.low, r.high)
        ci = DASH if r.interval is None or r.value is None else interval_text(r.interval)
        rows.append([r.against, NOUN[r.x], value, ci, r.status])
    return rows


def _paired(p: Paired) -> str:
    s = p.summary
    if s.mean is None:
        return DASH
    if s.ci_low is None or s.ci_high is None:
        return f"{s.mean:+.2f} (1 seed)"
    return f"{s.mean:+.2f} [{s.ci_low:+.2f}, {s.ci_high:+.2f}]"


MATCH_HEADER = ["proposed", "compared", "budget", "paired seeds", "Δ val acc, points [95% CI]", "Δ test acc, points"]


def match_row(m: Matched) -> list[str]:
    names = m.p.group.names
    return [m.proposed.label, m.other.label, m.p.budget_label(names), str(m.test.n), _paired(m.val), _paired(m.test)]


def headline_rows(t: Tradeoff) -> list[list[str]]:
    return [[f"vs {name}", *match_row(m)] for name, m in t.headlines]


def headline_caption() -> str:
    return (
        "headline matched budgets: the proposed model's chosen series against the compared model's series of the same "
        "prune method, at the smallest shared budget where the proposed model's validation accuracy is still >= A "
        "(else the largest); Δ = proposed - compared, paired by seed"
    )


# --------------------------------------------------------------------------- JSON


def _summary(s: Summary) -> dict[str, Any]:
    return {"n": s.n, "mean": num(s.mean), "std": num(s.std), "ci95_low": num(s.ci_low), "ci95_high": num(s.ci_high)}


def _side(r: Ratio, which: str) -> dict[str, Any] | None:
    side = getattr(r, which)
    if side is None:
        return None
    return {"label": side.label, "iso_state": side.iso.state, "iso_budget": num(side.iso.value), "test_acc": side.test}


def _ratio_json(r: Ratio) -> dict[str, Any]:
    i = r.interval
    return {
        "kind": r.kind,
        "against": r.against,
        "x": r.x,
        "status": r.status,
        "reason": r.reason,
        "ratio": num(r.value),
        "ratio_low": num(r.low),
        "ratio_high": None if r.high is None or math.isinf(r.high) else r.high,
        "ci95_low": None if i is None else num(i.low),
        "ci95_high": None if i is None else num(i.high),
        "replicates": None if i is None else i.replicates,
        "undetermined_replicates": None if i is None else i.undetermined,
        "fractions": r.fractions,
        "proposed": _side(r, "proposed"),
        "other": _side(r, "other"),
    }


def _match_json(m: Matched) -> dict[str, Any]:
    return {
        "proposed": m.p.group.label,
        "versus": m.o.group.label,
        "budget": {k: v for k, v in m.p.budget},
        "paired_seeds": list(m.test.seeds),
        "val_acc_diff_points": _summary(m.val.summary),
        "test_acc_diff_points": _summary(m.test.summary),
    }


def _series_json(s: Series) -> dict[str, Any]:
    return {
        "label": s.label,
        "model": s.model,
        "prune": s.prune,
        "points": [
            {
                "configuration": p.group.label,
                "budget": {k: v for k, v in p.budget},
                "seeds": p.group.seeds,
                "metrics": {m: _summary(p.summary(m)) for m in (*X_METRICS, *ACCS)},
            }
            for p in s.points
        ],
    }


def tradeoff_json(t: Tradeoff) -> dict[str, Any]:
    ref = t.reference
    return {
        "context": dict(t.context),
        "tolerance_points": t.tolerance,
        "level_val_acc": num(t.level),
        "reference": None
        if ref is None
        else {
            "configurations": [g.label for g in ref.groups],
            "val_acc": _summary(ref.summary(VAL_ACC)),
            "test_acc": _summary(ref.summary(TEST_ACC)),
            "x": {m: num(ref.x(m)) for m in X_METRICS},
        },
        "series": [_series_json(s) for s in t.series],
        "pareto_on_val_acc": {x: [p.group.label for p in pts] for x, pts in t.frontier.items()},
        "iso_ratios": [_ratio_json(r) for r in t.ratios],
        "matched_budgets": [_match_json(m) for m in t.matched],
        "headlines": [{"against": name, **_match_json(m)} for name, m in t.headlines],
    }


# --------------------------------------------------------------------------- terminal


def _fits(headers: list[str], rows: list[list[str]], fixed: int, width: int) -> list[list[int]]:
    """Column indices per table: the first `fixed` columns in each, the others packed to fit `width`
    (a rich table with the default box takes 1 + sum(column width + 3) characters)."""
    sizes = [max([len(h), *(len(r[i]) for r in rows)]) + 3 for i, h in enumerate(headers)]
    free = width - 1 - sum(sizes[:fixed])
    chunks: list[list[int]] = [[]]
    used = 0
    for i in range(fixed, len(headers)):
        if chunks[-1] and used + sizes[i] > free:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += sizes[i]
    return [list(range(fixed)) + c for c in chunks if c]


def print_tradeoff(t: Tradeoff, console: Any, names: dict[str, str]) -> None:
    """The section in a terminal: series tables that fit the width, the frontier, the ratios, the headlines."""
    from rich.table import Table
    from rich.text import Text

    from ssmoe_cli.report.terminal import STATUS_STYLE

    label = context_label(t, names)
    console.print(Text(f"Trade-off curves ({label})", style="bold"))
    console.print(Text(intro(t), style="dim"))
    head, rows = series_header(t), series_rows(t, compact=True)
    chunks = _fits(head, rows, 2, console.width)
    for n, cols in enumerate(chunks, start=1):
        part = f" ({n}/{len(chunks)})" if len(chunks) > 1 else ""
        table = Table(title=f"series: mean over seeds, accuracy ± half its 95% CI{part}")
        for i in cols:
            table.add_column(head[i], overflow="fold", no_wrap=i >= 2, justify="left" if i < 2 else "right")
        for row in rows:
            table.add_row(*(row[i] for i in cols))
        console.print(table)
    console.print(Text("Pareto frontier (fewest x for the highest validation accuracy):", style="bold"))
    for x, text in frontier_rows(t, compact=True):
        console.print(Text(f"  {x}: {text}"))
    if t.headlines:
        console.print(Text("Matched budgets (Δ = proposed - compared, points, paired by seed [95% CI]):", style="bold"))
        for name, m in t.headlines:
            _, _, budget, seeds, val, test = match_row(m)
            line = f"  vs {name}: {m.proposed.label} and {m.other.label} at {budget}, {seeds} paired seed(s): "
            console.print(Text(f"{line}Δ val {val}, Δ test {test}"))
        console.print(Text(headline_caption(), style="dim"))
    if t.matched:
        more = f"{len(t.matched)} matched budget(s) in all: --format markdown or json lists them"
        console.print(Text(more, style="dim"))
    console.print(Text("Iso-accuracy ratios (95% bootstrap CI over seeds):", style="bold"))
    for r in t.ratios:
        line = Text("  ")
        line.append(r.status, style=f"bold {STATUS_STYLE[r.status]}")
        line.append(f" — {r.claim}: {r.reason}")
        console.print(line)
