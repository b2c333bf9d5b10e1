"""Rendering a `Report`: rich tables for the terminal; markdown, CSV, JSON and HTML for files.

Cells read "mean ± std [95% CI low, high]"; "—" where no run logged the metric; "n=k/N" where only
k of a configuration's N runs did; a single value says that std and CI are n/a.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from typing import Any

from ssmoe_cli.report.stats import Findings, MetricSpec, Report, RunRecord, Summary, points, short_key

FORMATS = ("rich", "markdown", "csv", "json", "html")
DASH = "—"
STATUS_STYLE = {"supported": "green", "not supported": "red", "not measurable": "yellow"}


# --------------------------------------------------------------------------- numbers


def fmt_value(spec: MetricSpec, value: float) -> str:
    if spec.kind == "pct":
        return f"{100 * value:.2f}"
    if spec.kind == "count":
        return f"{value:,.0f}"
    if spec.kind == "ratio":
        return f"{value:.2f}x"
    return f"{value:.3g}"


def fmt_spread(spec: MetricSpec, value: float) -> str:
    """A std or CI bound: the value's format without the unit suffix."""
    return fmt_value(spec, value).rstrip("x")


def cell(spec: MetricSpec, s: Summary, runs: int, sep: str = " ") -> str:
    """One table cell; `sep` separates the CI (a newline in the terminal)."""
    if s.n == 0 or s.mean is None:
        return DASH
    count = f" (n={s.n}/{runs})" if s.n < runs else ""
    if s.std is None or s.ci_low is None or s.ci_high is None:
        which = f"n={s.n}/{runs}" if runs > 1 else "1 seed"
        return f"{fmt_value(spec, s.mean)}{sep}({which}: std/CI n/a)"
    ci = f"[{fmt_spread(spec, s.ci_low)}, {fmt_spread(spec, s.ci_high)}]"
    return f"{fmt_value(spec, s.mean)} ± {fmt_spread(spec, s.std)}{sep}{ci}{count}"


def _num(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return None if value is None or not math.isfinite(value) else value


# --------------------------------------------------------------------------- structured data


def group_rows(report: Report) -> list[dict[str, Any]]:
    """One flat dict per configuration: keys, runs, seeds, then n/mean/std/CI of each metric."""
    rows = []
    for g in report.groups:
        row: dict[str, Any] = {short_key(k): v for k, v in g.key}
        row["runs"] = len(g.runs)
        row["seeds"] = " ".join(g.seeds)
        for m in report.metrics:
            s = g.summary(m.name)
            row[f"{m.name}:n"] = s.n
            row[f"{m.name}:mean"] = _num(s.mean)
            row[f"{m.name}:std"] = _num(s.std)
            row[f"{m.name}:ci95_low"] = _num(s.ci_low)
            row[f"{m.name}:ci95_high"] = _num(s.ci_high)
        rows.append(row)
    return rows


def _summary_json(s: Summary) -> dict[str, Any]:
    return {
        "n": s.n,
        "mean": _num(s.mean),
        "std": _num(s.std),
        "ci95_low": _num(s.ci_low),
        "ci95_high": _num(s.ci_high),
    }


def findings_json(f: Findings) -> dict[str, Any]:
    c = f.compression
    return {
        "context": dict(f.context),
        "compression_vs_fcl": {
            "reference": c.reference.label if c.reference else None,
            "chosen": c.chosen.label if c.chosen else None,
            "percent_fewer_nonzero": _num(c.percent),
            "nonzero_ratio": _num(c.ratio),
            "reference_acc": _summary_json(c.reference.summary("test/acc")) if c.reference else None,
            "chosen_acc": _summary_json(c.chosen.summary("test/acc")) if c.chosen else None,
            "chosen_ratio_vs_fcl": _summary_json(c.chosen.summary("compression/ratio_vs_fcl")) if c.chosen else None,
            "within_tolerance": [g.label for g in c.within_tolerance],
        },
        "vs_sgmoe": {
            "reason": f.sgmoe.reason or None,
            "headline": f.sgmoe.headline.setting_label if f.sgmoe.headline else None,
            "matches": [
                {
                    "setting": dict(m.setting),
                    "ptsne_moe": m.ptsne.label,
                    "sgmoe": m.sgmoe.label,
                    "paired_seeds": list(m.acc.seeds),
                    "acc_diff_points": _summary_json(m.acc.summary),
                    "nonzero_ratio_sgmoe_over_ptsne": _num(m.nonzero_ratio),
                    "ratio_vs_fcl_diff": _num(m.ratio_diff),
                    "claims": [vars(m.accuracy_claim), vars(m.compression_claim)],
                }
                for m in f.sgmoe.matches
            ],
        },
        "sentence": f.sentence,
        "claims": [vars(c) for c in f.claims],
    }


def _excluded_rows(runs: list[RunRecord]) -> list[dict[str, str]]:
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


def to_json(report: Report) -> str:
    data = {
        "tracking_uri": report.tracking_uri,
        "experiments": report.experiments,
        "group_keys": report.keys,
        "tolerance_points": report.tolerance,
        "metrics": [m.name for m in report.metrics],
        "groups": [
            {
                "keys": {k: v for k, v in g.key},
                "label": g.label,
                "runs": len(g.runs),
                "seeds": g.seeds,
                "run_ids": [r.run_id for r in g.runs],
                "metrics": {m.name: _summary_json(g.summary(m.name)) for m in report.metrics},
            }
            for g in report.groups
        ],
        "findings": [findings_json(f) for f in report.findings],
        "excluded_runs": _excluded_rows(report.excluded) if report.show_excluded else None,
        "notes": report.notes,
        "plots": report.plots,
        "report_run": report.report_run,
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def to_csv(report: Report) -> str:
    """The results table only (one row per configuration); the claims are in the other formats."""
    rows = group_rows(report)
    fields = [*(short_key(k) for k in report.keys), "runs", "seeds"]
    fields += [f"{m.name}:{s}" for m in report.metrics for s in ("n", "mean", "std", "ci95_low", "ci95_high")]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


# --------------------------------------------------------------------------- text tables


def _header(report: Report) -> list[str]:
    return [*(short_key(k) for k in report.keys), "runs", "seeds", *(m.label for m in report.metrics)]


def _body(report: Report) -> list[list[str]]:
    return [
        [
            *(DASH if v is None else v for _, v in g.key),
            str(len(g.runs)),
            " ".join(g.seeds) or DASH,
            *(cell(m, g.summary(m.name), len(g.runs)) for m in report.metrics),
        ]
        for g in report.groups
    ]


def _match_rows(f: Findings) -> list[list[str]]:
    rows = []
    for m in f.sgmoe.matches:
        s = m.acc.summary
        if s.mean is None:
            acc = DASH
        elif s.ci_low is None or s.ci_high is None:
            acc = f"{s.mean:+.2f} (single seed: no CI)"
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


MATCH_HEADER = [
    "matched setting",
    "paired seeds",
    "acc diff ptsne−sgmoe (points) [95% CI]",
    "nonzero sgmoe/ptsne",
    "Δ compression vs FCL",
]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _intro(report: Report) -> list[str]:
    return [
        f"experiments: {', '.join(report.experiments)} — tracking: {report.tracking_uri}",
        f"grouped by: {', '.join(report.keys)} — accuracy tolerance: {points(report.tolerance)} — "
        "cells: mean ± std [95% t CI] over seeds",
    ]


def to_markdown(report: Report) -> str:
    parts = ["# ssmoe report", "", *(f"{line}  " for line in _intro(report)), ""]
    parts += ["## Results", "", _md_table(_header(report), _body(report)), ""]
    for f in report.findings:
        parts += [f"## The paper's claims ({f.context_label})", "", f"> {f.sentence}", ""]
        parts += [f"- **{c.status}** — {c.claim}: {c.reason}" for c in f.claims]
        parts.append("")
        if f.sgmoe.matches:
            parts += ["### ptsne_moe vs sgmoe at matched sparsity", "", _md_table(MATCH_HEADER, _match_rows(f)), ""]
    if report.show_excluded and report.excluded:
        rows = [list(r.values()) for r in _excluded_rows(report.excluded)]
        parts += [
            "## Runs not FINISHED (left out)",
            "",
            _md_table(["run", "status", "model", "prune", "seed", "error"], rows),
            "",
        ]
    if report.notes:
        parts += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    if report.plots:
        parts += ["## Plots", "", *(f"- {p}" for p in report.plots), ""]
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def to_html(report: Report) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>ssmoe report</title>',
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        ".supported{color:green}.not-supported{color:#b00}.not-measurable{color:#a60}</style>",
        "</head><body>",
        "<h1>ssmoe report</h1>",
        *(f"<p>{e(line)}</p>" for line in _intro(report)),
        "<h2>Results</h2>",
        _html_table(_header(report), _body(report)),
    ]
    for f in report.findings:
        parts += [
            f"<h2>The paper's claims ({e(f.context_label)})</h2>",
            f"<blockquote>{e(f.sentence)}</blockquote>",
            "<ul>",
        ]
        parts += [
            f'<li class="{c.status.replace(" ", "-")}"><b>{e(c.status)}</b> — {e(c.claim)}: {e(c.reason)}</li>'
            for c in f.claims
        ]
        parts.append("</ul>")
        if f.sgmoe.matches:
            parts += ["<h3>ptsne_moe vs sgmoe at matched sparsity</h3>", _html_table(MATCH_HEADER, _match_rows(f))]
    if report.show_excluded and report.excluded:
        rows = [list(r.values()) for r in _excluded_rows(report.excluded)]
        parts += [
            "<h2>Runs not FINISHED (left out)</h2>",
            _html_table(["run", "status", "model", "prune", "seed", "error"], rows),
        ]
    if report.notes:
        parts += ["<h2>Notes</h2>", "<ul>", *(f"<li>{e(n)}</li>" for n in report.notes), "</ul>"]
    if report.plots:
        parts += ["<h2>Plots</h2>", "<ul>", *(f"<li>{e(p)}</li>" for p in report.plots), "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


RENDERERS = {"markdown": to_markdown, "csv": to_csv, "json": to_json, "html": to_html}


def render(report: Report, fmt: str) -> str:
    """The report as text in one of the file formats."""
    return RENDERERS[fmt](report)


# --------------------------------------------------------------------------- terminal


def print_rich(report: Report, console: Any) -> None:
    """The tables, the filled sentence and the claims, to a rich Console."""
    from rich.table import Table
    from rich.text import Text

    console.print(Text("\n".join(_intro(report)), style="dim"))
    # Two tables of a few metrics each: nine metrics side by side do not fit a terminal.
    halves = [report.metrics[:5], report.metrics[5:]]
    titles = ["accuracy and size", "time and experts"]
    for title, metrics in zip(titles, halves, strict=True):
        if not metrics:
            continue
        table = Table(title=f"ssmoe report: {title} (mean ± std, [95% CI] over seeds)", show_lines=True)
        table.add_column("configuration")
        table.add_column("runs", justify="right")
        for m in metrics:
            table.add_column(m.label, justify="right")
        for g in report.groups:
            seeds = f"{len(g.runs)}\nseeds {' '.join(g.seeds)}" if g.seeds else str(len(g.runs))
            table.add_row(g.label, seeds, *(cell(m, g.summary(m.name), len(g.runs), sep="\n") for m in metrics))
        console.print(table)
    for f in report.findings:
        if f.sgmoe.matches:
            table = Table(title=f"ptsne_moe vs sgmoe at matched sparsity ({f.context_label})")
            for h in MATCH_HEADER:
                table.add_column(h, justify="right")
            for row in _match_rows(f):
                table.add_row(*row)
            console.print(table)
        console.print(Text(f"The paper's claims ({f.context_label}):", style="bold"))
        console.print(Text(f"  {f.sentence}", style="italic"))
        for c in f.claims:
            line = Text("  ")
            line.append(f"{c.status}", style=f"bold {STATUS_STYLE[c.status]}")
            line.append(f" — {c.claim}: {c.reason}")
            console.print(line)
    if report.show_excluded and report.excluded:
        table = Table(title="training runs not FINISHED (left out of the statistics)")
        rows = _excluded_rows(report.excluded)
        for h in rows[0]:
            table.add_column(h)
        for r in rows:
            table.add_row(*r.values())
        console.print(table)
    for note in report.notes:
        console.print(Text(f"note: {note}", style="yellow"))
