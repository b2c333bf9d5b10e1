"""The report in a terminal (rich): tables that fit the console's width, the sentence and the claims.

Cells are `mean ± std` on one line; `--intervals` adds tables of 95% confidence intervals. Metric
columns never wrap: they are packed into as many tables as the width needs (one on a wide screen,
three in 80 columns), each repeating the configuration column, which alone may wrap its label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ssmoe_cli.metrics import Metric
from ssmoe_cli.report.build import Report
from ssmoe_cli.report.cells import excluded_rows, interval, intro, match_rows, mean_std
from ssmoe_cli.report.intervals import Summary

STATUS_STYLE = {"supported": "green", "not supported": "red", "not measurable": "yellow"}
MATCH_HEADER = ["setting", "seeds", "Δ acc, points [95% CI]", "size ratio", "Δ vs FCL"]
_CONFIG_MIN = 24  # the configuration column's width before its labels wrap
Cell = Callable[[Metric, Summary, int], str]


def _width(texts: Sequence[str]) -> int:
    return max((len(t) for t in texts), default=0)


def config_width(report: Report) -> int:
    """The configuration column's width: whole labels up to _CONFIG_MIN, never narrower than a word."""
    labels = [g.label for g in report.groups]
    words = [w for label in labels for w in label.split()]
    return max(_width(words), min(_width(labels), _CONFIG_MIN), len("configuration"))


def pack_columns(report: Report, cell: Cell, width: int) -> list[list[Metric]]:
    """The metrics in REPORT order, split into runs of columns whose table fits `width` characters.

    A rich table with the default box takes 1 + sum(column width + 3) characters.
    """
    free = width - 1 - (config_width(report) + 3) - (len("runs") + 3)
    chunks: list[list[Metric]] = [[]]
    used = 0
    for m in report.metrics:
        cells = [cell(m, g.summary(m.name), len(g.runs)) for g in report.groups]
        need = max(len(m.short), _width(cells)) + 3
        if chunks[-1] and used + need > free:
            chunks.append([])
            used = 0
        chunks[-1].append(m)
        used += need
    return [c for c in chunks if c]


def _tables(report: Report, console: Any, cell: Cell, what: str) -> None:
    from rich.table import Table

    chunks = pack_columns(report, cell, console.width)
    for i, metrics in enumerate(chunks, start=1):
        part = f" ({i}/{len(chunks)})" if len(chunks) > 1 else ""
        table = Table(title=f"ssmoe report: {what} over seeds{part}")
        table.add_column("configuration", overflow="fold", min_width=config_width(report))
        table.add_column("runs", justify="right", no_wrap=True)
        for m in metrics:
            table.add_column(m.short, justify="right", no_wrap=True)
        for g in report.groups:
            table.add_row(g.label, str(len(g.runs)), *(cell(m, g.summary(m.name), len(g.runs)) for m in metrics))
        console.print(table)


def _legend(report: Report) -> str:
    return "columns: " + "; ".join(f"{m.short} = {m.name}" for m in report.metrics)


def print_rich(report: Report, console: Any, intervals: bool = False) -> None:
    """The tables, the filled sentence and the claims, to a rich Console."""
    from rich.table import Table
    from rich.text import Text

    console.print(Text("\n".join(intro(report)), style="dim"))
    if report.groups:
        _tables(report, console, mean_std, "mean ± std")
        if intervals:
            _tables(report, console, interval, "95% confidence intervals")
        more = "" if intervals else "; 95% confidence intervals: --intervals"
        console.print(Text(f"{_legend(report)}{more}", style="dim"))
    from ssmoe_cli.report.frontier_text import print_tradeoff

    r = report.roles
    for f in report.findings:
        if f.versus.matches:
            table = Table(
                title=f"{r.proposed} vs {r.versus} at matched sparsity ({f.context_label})",
                caption=f"Δ acc: {r.proposed} − {r.versus}, paired by seed; size ratio: nonzero parameters "
                f"{r.versus} / {r.proposed} (above 1: {r.proposed} is smaller); Δ vs FCL: "
                f"difference of compression/ratio_vs_fcl",
            )
            table.add_column(MATCH_HEADER[0], overflow="fold")
            for h in MATCH_HEADER[1:]:
                table.add_column(h, justify="right", no_wrap=True)
            for row in match_rows(f):
                table.add_row(*row)
            console.print(table)
        console.print(Text(f"The paper's claims ({f.context_label}):", style="bold"))
        console.print(Text(f"  {f.sentence}", style="italic"))
        for c in f.claims:
            line = Text("  ")
            line.append(f"{c.status}", style=f"bold {STATUS_STYLE[c.status]}")
            line.append(f" — {c.claim}: {c.reason}")
            console.print(line)
    for t in report.tradeoffs:
        print_tradeoff(t, console, report.names)
    if report.pairs is not None:
        from ssmoe_cli.report.pairs import CAPTION, gate_rows, pair_rows

        for title, (head, rows), caption in (
            ("the claims across (dataset, architecture) pairs", pair_rows(report.pairs), CAPTION),
            ("the t-SNE gate's map per pair (held-out data)", gate_rows(report.pairs), ""),
        ):
            table = Table(title=title, caption=caption or None)
            for h in head:
                table.add_column(h, overflow="fold")
            for row in rows:
                table.add_row(*row)
            console.print(table)
    if report.show_excluded and report.excluded:
        table = Table(title="training runs not FINISHED (left out of the statistics)")
        rows = excluded_rows(report.excluded)
        for h in rows[0]:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row.values())
        console.print(table)
    for note in report.notes:
        console.print(Text(f"note: {note}", style="yellow"))
