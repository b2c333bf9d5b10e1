"""The report as a file: markdown, CSV, JSON or HTML (the terminal tables are report/terminal.py).

Cells read "mean ± std [95% CI low, high]" (report/cells.py). The HTML page is self-contained: its
plots are embedded as base64 PNG images. The markdown links its plots by paths relative to the
directory the file is written to, so they show in any markdown viewer opened there.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from ssmoe_cli.metrics import RATIO_VS_FCL, TEST_ACC
from ssmoe_cli.report import frontier_text as ft
from ssmoe_cli.report import pairs
from ssmoe_cli.report.build import Report
from ssmoe_cli.report.cells import (
    body,
    excluded_rows,
    header,
    intro,
    match_caption,
    match_header,
    match_rows,
    num,
)
from ssmoe_cli.report.claims import Findings
from ssmoe_cli.report.frontier_analysis import Tradeoff
from ssmoe_cli.report.intervals import Summary

FORMATS = ("rich", "markdown", "csv", "json", "html")
EXCLUDED_HEADER = ["run", "status", "model", "prune", "seed", "error"]


def _summary_json(s: Summary) -> dict[str, Any]:
    return {"n": s.n, "mean": num(s.mean), "std": num(s.std), "ci95_low": num(s.ci_low), "ci95_high": num(s.ci_high)}


def findings_json(f: Findings) -> dict[str, Any]:
    c = f.compression
    return {
        "context": dict(f.context),
        "compression_vs_dense": {
            "reference": c.reference.label if c.reference else None,
            "chosen": c.chosen.label if c.chosen else None,
            "percent_fewer_nonzero": num(c.percent),
            "nonzero_ratio": num(c.ratio),
            "reference_acc": _summary_json(c.reference.summary(TEST_ACC)) if c.reference else None,
            "chosen_acc": _summary_json(c.chosen.summary(TEST_ACC)) if c.chosen else None,
            "chosen_ratio_vs_fcl": _summary_json(c.chosen.summary(RATIO_VS_FCL)) if c.chosen else None,
            "within_tolerance": [g.label for g in c.within_tolerance],
        },
        "versus": {
            "reason": f.versus.reason or None,
            "headline": f.versus.headline.setting_label if f.versus.headline else None,
            "matches": [
                {
                    "setting": dict(m.setting),
                    "proposed": m.proposed.label,
                    "versus": m.other.label,
                    "paired_seeds": list(m.acc.seeds),
                    "acc_diff_points": _summary_json(m.acc.summary),
                    "nonzero_ratio_versus_over_proposed": num(m.nonzero_ratio),
                    "ratio_vs_fcl_diff": num(m.ratio_diff),
                    "claims": [vars(m.accuracy_claim), vars(m.compression_claim)],
                }
                for m in f.versus.matches
            ],
        },
        "sentence": f.sentence,
        "claims": [vars(c) for c in f.claims],
    }


def to_json(report: Report, base: Path | None = None) -> str:
    roles = report.roles
    data = {
        "tracking_uri": report.tracking_uri,
        "experiments": report.experiments,
        "group_keys": report.keys,
        "roles": {name: getattr(roles, name).describe() for name in ("proposed", "dense", "versus")},
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
        "set_aside_runs": [
            {"run_id": s.run.run_id, "seed": s.run.seed, "kept_run_id": s.kept.run_id, "reason": "repeats a seed"}
            for s in report.set_aside
        ],
        "findings": [findings_json(f) for f in report.findings],
        "tradeoffs": [ft.tradeoff_json(t) for t in report.tradeoffs],
        "pairs": dataclasses.asdict(report.pairs) if report.pairs is not None else None,
        "excluded_runs": excluded_rows(report.excluded) if report.show_excluded else None,
        "notes": report.notes,
        "plots": report.plots,
        "report_run": report.report_run,
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def to_csv(report: Report, base: Path | None = None) -> str:
    """The results table only (one row per configuration); the claims are in the other formats."""
    names = report.names
    fields = [*(names[k] for k in report.keys), "runs", "seeds"]
    fields += [f"{m.name}:{s}" for m in report.metrics for s in ("n", "mean", "std", "ci95_low", "ci95_high")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for g in report.groups:
        row: list[Any] = [*(v for _, v in g.key), len(g.runs), " ".join(g.seeds)]
        for m in report.metrics:
            s = g.summary(m.name)
            row += [s.n, num(s.mean), num(s.std), num(s.ci_low), num(s.ci_high)]
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _relative(path: str, base: Path | None) -> str:
    """A plot's path as a markdown link from `base` (the output file's directory; default: here)."""
    return Path(os.path.relpath(Path(path).resolve(), (base or Path.cwd()).resolve())).as_posix()


def to_markdown(report: Report, base: Path | None = None) -> str:
    parts = ["# ssmoe report", "", *(f"{line}  " for line in intro(report)), ""]
    parts += [
        "## Results",
        "",
        "Cells: mean ± std [95% CI] over seeds.",
        "",
        _md_table(header(report), body(report)),
        "",
    ]
    for f in report.findings:
        parts += [f"## The paper's claims ({f.context_label})", "", f"> {f.sentence}", ""]
        parts += [f"- **{c.status}** — {c.claim}: {c.reason}" for c in f.claims]
        parts.append("")
        if f.versus.matches:
            title = f"### {report.roles.proposed} vs {report.roles.versus} at matched sparsity"
            parts += [title, "", _md_table(match_header(report), match_rows(f)), "", match_caption(report), ""]
    for t in report.tradeoffs:
        parts += _md_tradeoff(t, report.names)
    if report.pairs is not None:
        parts += ["## The claims across (dataset, architecture) pairs", ""]
        parts += [_md_table(*pairs.pair_rows(report.pairs)), "", pairs.CAPTION, ""]
        parts += ["### The t-SNE gate's map per pair (held-out data)", ""]
        parts += [_md_table(*pairs.gate_rows(report.pairs)), ""]
    if report.show_excluded and report.excluded:
        rows = [list(r.values()) for r in excluded_rows(report.excluded)]
        parts += ["## Runs not FINISHED (left out)", "", _md_table(EXCLUDED_HEADER, rows), ""]
    if report.notes:
        parts += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    if report.plots:
        parts += ["## Plots", ""]
        parts += [f"![{Path(p).stem}]({_relative(p, base)})" for p in report.plots]
        parts.append("")
    return "\n".join(parts)


def _md_tradeoff(t: Tradeoff, names: dict[str, str]) -> list[str]:
    parts = [f"## Trade-off curves ({ft.context_label(t, names)})", "", ft.intro(t), ""]
    parts += ["### Series", "", "Accuracy: mean [95% CI] over seeds, in percent.", ""]
    parts += [_md_table(ft.series_header(t), ft.series_rows(t)), ""]
    parts += ["### Pareto frontier (on validation accuracy)", "", _md_table(["x", "frontier"], ft.frontier_rows(t)), ""]
    parts += ["### Iso-accuracy ratios", "", _md_table(ft.RATIO_HEADER, ft.ratio_rows(t)), ""]
    parts += [f"- **{r.status}** — {r.claim}: {r.reason}" for r in t.ratios]
    parts.append("")
    if t.headlines:
        rows = ft.headline_rows(t)
        parts += ["### Matched budgets", "", _md_table(["", *ft.MATCH_HEADER], rows), "", ft.headline_caption(), ""]
    if t.matched:
        parts += ["All matched budgets:", "", _md_table(ft.MATCH_HEADER, [ft.match_row(m) for m in t.matched]), ""]
    return parts


def _html_tradeoff(t: Tradeoff, names: dict[str, str]) -> list[str]:
    e = html.escape
    parts = [f"<h2>Trade-off curves ({e(ft.context_label(t, names))})</h2>", f"<p>{e(ft.intro(t))}</p>"]
    parts.append(_html_table(ft.series_header(t), ft.series_rows(t), "accuracy: mean [95% CI] over seeds, percent"))
    parts += ["<h3>Pareto frontier (on validation accuracy)</h3>", _html_table(["x", "frontier"], ft.frontier_rows(t))]
    parts += ["<h3>Iso-accuracy ratios</h3>", _html_table(ft.RATIO_HEADER, ft.ratio_rows(t)), "<ul>"]
    parts += [
        f'<li class="{r.status.replace(" ", "-")}"><b>{e(r.status)}</b> — {e(r.claim)}: {e(r.reason)}</li>'
        for r in t.ratios
    ]
    parts.append("</ul>")
    if t.headlines:
        head = ["", *ft.MATCH_HEADER]
        parts += ["<h3>Matched budgets</h3>", _html_table(head, ft.headline_rows(t), ft.headline_caption())]
    if t.matched:
        parts.append(_html_table(ft.MATCH_HEADER, [ft.match_row(m) for m in t.matched], "all matched budgets"))
    return parts


def _html_table(head: list[str], rows: list[list[str]], caption: str = "") -> str:
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    tb = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>{cap}\n<thead><tr>{th}</tr></thead>\n<tbody>\n{tb}</tbody>\n</table>"


def _img(path: str) -> str:
    """A plot embedded in the page (a page that links local files breaks once moved or mailed)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = html.escape(Path(path).name)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'


def to_html(report: Report, base: Path | None = None) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>ssmoe report</title>',
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}caption{caption-side:bottom}"
        "img{max-width:100%}.supported{color:green}.not-supported{color:#b00}.not-measurable{color:#a60}</style>",
        "</head><body>",
        "<h1>ssmoe report</h1>",
        *(f"<p>{e(line)}</p>" for line in intro(report)),
        "<h2>Results</h2>",
        _html_table(header(report), body(report), "cells: mean ± std [95% CI] over seeds"),
    ]
    for f in report.findings:
        parts += [f"<h2>The paper's claims ({e(f.context_label)})</h2>", f"<blockquote>{e(f.sentence)}</blockquote>"]
        parts.append("<ul>")
        parts += [
            f'<li class="{c.status.replace(" ", "-")}"><b>{e(c.status)}</b> — {e(c.claim)}: {e(c.reason)}</li>'
            for c in f.claims
        ]
        parts.append("</ul>")
        if f.versus.matches:
            title = f"{report.roles.proposed} vs {report.roles.versus} at matched sparsity"
            parts += [f"<h3>{e(title)}</h3>", _html_table(match_header(report), match_rows(f), match_caption(report))]
    for t in report.tradeoffs:
        parts += _html_tradeoff(t, report.names)
    if report.pairs is not None:
        parts += ["<h2>The claims across (dataset, architecture) pairs</h2>"]
        parts.append(_html_table(*pairs.pair_rows(report.pairs), pairs.CAPTION))
        parts += ["<h3>The t-SNE gate's map per pair (held-out data)</h3>", _html_table(*pairs.gate_rows(report.pairs))]
    if report.show_excluded and report.excluded:
        rows = [list(r.values()) for r in excluded_rows(report.excluded)]
        parts += ["<h2>Runs not FINISHED (left out)</h2>", _html_table(EXCLUDED_HEADER, rows)]
    if report.notes:
        parts += ["<h2>Notes</h2>", "<ul>", *(f"<li>{e(n)}</li>" for n in report.notes), "</ul>"]
    if report.plots:
        parts += ["<h2>Plots</h2>", *(_img(p) for p in report.plots)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


RENDERERS = {"markdown": to_markdown, "csv": to_csv, "json": to_json, "html": to_html}


def render(report: Report, fmt: str, base: Path | None = None) -> str:
    """The report as text in one of the file formats; `base`: the directory it is written to."""
    return RENDERERS[fmt](report, base)
