"""The routing ablation (report/ablation.py) as `ssmoe report` shows it: terminal tables, markdown, HTML
and JSON. Two tables per ablation (accuracy with the paired differences, then the routing diagnostics),
each gate's verdict with its numbers, and the sentence on which ingredient carries the effect."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from ssmoe_cli.report.ablation import DIAGNOSTICS, Ablation, ablations, caption, header, rows
from ssmoe_cli.report.intervals import Paired, Summary

_ACCURACY = 6  # header()'s first columns: gate, seeds, val, test, Δ val, Δ test
_DIAG = slice(_ACCURACY, _ACCURACY + len(DIAGNOSTICS))
ANCHORS = {  # where a section goes in a rendered report: before the first of these, else at the end
    "markdown": ("## Runs not FINISHED", "## Notes", "## Plots"),
    "html": ("<h2>Runs not FINISHED", "<h2>Notes</h2>", "<h2>Plots</h2>", "</body></html>"),
}


def of(report: Any) -> list[Ablation]:
    """The routing ablations of a built report (none unless configurations differ only in their gate)."""
    return ablations(report.groups, report.keys, report.names)


def title(a: Ablation) -> str:
    return f"Routing ablation: each gate vs {a.reference}" + (f" ({a.context})" if a.context else "")


def tables(a: Ablation) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of the accuracy table (with each gate's verdict) and of the diagnostics table."""
    full, head = rows(a), header(a.reference)
    accuracy = ([*head[:_ACCURACY], head[-1]], [[*r[:_ACCURACY], r[-1]] for r in full])
    diagnostics = ([head[0], *head[_DIAG]], [[r[0], *r[_DIAG]] for r in full])
    return [accuracy, diagnostics]


def _verdicts(a: Ablation) -> list[tuple[str, str, str]]:
    """(status, claim, verdict with its numbers) of each gate but the reference."""
    return [(r.status, r.claim, r.verdict) for r in a.rows if r.status is not None]


# --------------------------------------------------------------------------- files


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(map(esc, row)) + " |" for row in body]


def markdown(found: Sequence[Ablation]) -> str:
    parts: list[str] = []
    for a in found:
        parts += [f"## {title(a)}", "", f"> {a.sentence}", ""]
        for head, body in tables(a):
            parts += [*_md_table(head, body), ""]
        parts += [caption(a.reference) + ".", ""]
        parts += [f"- **{status}** ({claim}) — {verdict}" for status, claim, verdict in _verdicts(a)]
        parts.append("")
    return "\n".join(parts)


def _html(found: Sequence[Ablation]) -> str:
    e = html.escape
    parts: list[str] = []
    for a in found:
        parts += [f"<h2>{e(title(a))}</h2>", f"<blockquote>{e(a.sentence)}</blockquote>"]
        for i, (head, body) in enumerate(tables(a)):
            th = "".join(f"<th>{e(h)}</th>" for h in head)
            tb = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>\n" for row in body)
            cap = f"<caption>{e(caption(a.reference))}</caption>" if i == 0 else ""
            parts.append(f"<table>{cap}\n<thead><tr>{th}</tr></thead>\n<tbody>\n{tb}</tbody>\n</table>")
        parts.append("<ul>")
        parts += [f'<li class="{s.replace(" ", "-")}"><b>{e(s)}</b> ({e(c)}) — {e(v)}</li>' for s, c, v in _verdicts(a)]
        parts.append("</ul>")
    return "\n".join(parts) + "\n"


def _summary(s: Summary | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"n": s.n, "mean": s.mean, "ci95_low": s.ci_low, "ci95_high": s.ci_high}


def _paired(p: Paired | None) -> dict[str, Any] | None:
    return None if p is None else {"seeds": list(p.seeds), "diffs": list(p.diffs), **(_summary(p.summary) or {})}


def to_json(found: Sequence[Ablation]) -> list[dict[str, Any]]:
    from ssmoe_cli import metrics as M

    return [
        {
            "context": a.context,
            "reference": a.rows[0].gate,
            "sentence": a.sentence,
            "gates": [
                {
                    "gate": r.gate,
                    "configuration": r.group.label,
                    "seeds": r.group.seeds,
                    "val_acc": _summary(r.group.summary(M.VAL_ACC)),
                    "test_acc": _summary(r.group.summary(M.TEST_ACC)),
                    "val_acc_diff_points": _paired(r.val),
                    "test_acc_diff_points": _paired(r.test),
                    "diagnostics": {name: _summary(r.group.summary(name)) for name, _, _ in DIAGNOSTICS},
                    "status": r.status,
                    "verdict": r.verdict,
                }
                for r in a.rows
            ],
        }
        for a in found
    ]


def _insert(text: str, section: str, anchors: Sequence[str]) -> str:
    at = min((i for a in anchors if (i := text.find(a)) >= 0), default=len(text))
    return text[:at] + section + ("\n" if at < len(text) else "") + text[at:]


def amend(text: str, fmt: str, found: Sequence[Ablation]) -> str:
    """A rendered report with its ablations added (CSV is the results table only: unchanged)."""
    if not found:
        return text
    if fmt == "json":
        data = json.loads(text)
        data["ablations"] = to_json(found)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "markdown":
        return _insert(text, markdown(found), ANCHORS["markdown"])
    if fmt == "html":
        return _insert(text, _html(found), ANCHORS["html"])
    return text


# --------------------------------------------------------------------------- terminal


def print_rich(found: Sequence[Ablation], console: Any) -> None:
    """Each ablation's two tables, its verdicts and its sentence, to a rich Console."""
    from rich.table import Table
    from rich.text import Text

    from ssmoe_cli.report.terminal import STATUS_STYLE

    for a in found:
        for i, (head, body) in enumerate(tables(a)):
            # Text, not markup strings: "[-0.75, -0.25]" and the caption's brackets are data.
            under = Text(caption(a.reference)) if i else None
            table = Table(title=Text(title(a) + ("" if i == 0 else ": routing diagnostics")), caption=under)
            for j, h in enumerate(head):
                table.add_column(Text(h), overflow="fold", justify="left" if j == 0 or h == "verdict" else "right")
            for row in body:
                table.add_row(*map(Text, row))
            console.print(table)
        for status, claim, verdict in _verdicts(a):
            line = Text("  ")
            line.append(status, style=f"bold {STATUS_STYLE[status]}")
            line.append(f" ({claim}) — {verdict}")
            console.print(line)
        console.print(Text(f"  {a.sentence}", style="italic"))
