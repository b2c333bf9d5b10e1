"""`ssmoe report`: summarise training runs over seeds, fill the paper's two blanks, write tables and plots.

Reads the MLflow store `ssmoe train` writes (same defaults), prints a rich table (or writes
markdown / CSV / JSON / HTML), saves PNG plots and logs all of it as a run of type "report".
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssmoe_cli.report.render import FORMATS

EPILOG = """examples:
  ssmoe report                                          the "ssmoe" experiment, rich tables, plots in reports/ssmoe/
  ssmoe report --experiment ablation_topology --format markdown > table.md
  ssmoe report -e sweep_a -e sweep_b --output report.html --no-mlflow-run
  ssmoe report --group-by params.topology.degree --tolerance 0.5

Cells are mean ± sample std and a 95% Student-t confidence interval over seeds (one run per seed
and configuration: a repeated seed counts once, its latest run). Configurations are grouped by
model, prune, any of gating, topology, data, target_sparsity, density, num_experts, k, perplexity
that varies across the selected runs, and the --group-by keys.

The paper's blanks: (1) percent fewer nonzero parameters of the ptsne_moe configuration with the
fewest nonzero parameters among those within --tolerance points of the dense FCL's accuracy;
(2) ptsne_moe vs sgmoe at the same pruning: accuracy difference paired by seed with a 95% CI, and the
nonzero-parameter ratio. Each claim is printed as supported, not supported or not measurable,
with the reason (exact definitions: the docstrings of ssmoe_cli.report.stats).

exit status: 0 report written; 1 no finished training runs; 2 no store or experiment, or bad options.
"""

SUFFIX_FORMATS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".csv": "csv",
    ".json": "json",
    ".html": "html",
    ".htm": "html",
    ".txt": "rich",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssmoe report",
        description="Summarise `ssmoe train` runs over seeds (mean ± std, 95% CI), fill the paper's two blanks "
        "(compression vs FCL, improvement vs SGMoE), write tables and plots, log them to MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this directory)",
    )
    parser.add_argument(
        "-e",
        "--experiment",
        action="append",
        dest="experiments",
        metavar="NAME",
        help='MLflow experiment to read; repeat for several (default: "ssmoe", as `ssmoe train`)',
    )
    parser.add_argument(
        "--group-by",
        action="append",
        default=[],
        metavar="KEY[,KEY]",
        help="extra grouping keys: a tag (topology, tags.sweep_id) or a param (params.topology.degree)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="accuracy tolerance of the compression claim, in percentage points (default: 1.0)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="rich (terminal tables, the default) or a file format; markdown/csv/json/html go to stdout "
        "unless --output is given (default: from the --output suffix, else rich)",
    )
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the formatted report to FILE")
    parser.add_argument(
        "--plots-dir", type=Path, metavar="DIR", help="where the PNG plots go (default: reports/<experiment>/)"
    )
    parser.add_argument(
        "--include-failed",
        action="store_true",
        help="also list the training runs that did not finish (never part of the statistics)",
    )
    parser.add_argument(
        "--no-mlflow-run", action="store_true", help="do not log the report as a run (run_type=report) in MLflow"
    )
    return parser


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def main(args: list[str]) -> int:
    """Entry point of `ssmoe report`; returns the exit status."""
    parser = build_parser()
    ns = parser.parse_args(args)
    if ns.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    fmt = ns.format or (SUFFIX_FORMATS.get(ns.output.suffix.lower()) if ns.output else None) or "rich"
    machine_stdout = ns.output is None and fmt != "rich"
    # MLflow draws a progress bar for every artifact it downloads (the gating maps): noise here.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from rich.console import Console

    # With a file format on stdout (`> table.md`), everything for people goes to stderr.
    console = Console(stderr=machine_stdout)
    from ssmoe_cli.report.query import ReportError

    try:
        return run(ns, fmt, console)
    except ReportError as exc:
        print(f"ssmoe report: error: {exc}", file=sys.stderr)
        return exc.exit_code


def run(ns: argparse.Namespace, fmt: str, console: Any) -> int:
    from ssmoe_cli.report import query
    from ssmoe_cli.report.render import print_rich, render
    from ssmoe_cli.report.stats import build_report

    names: list[str] = ns.experiments or ["ssmoe"]
    extra_keys = [k.strip() for arg in ns.group_by for k in arg.split(",") if k.strip()]
    client, uri = query.open_client(ns.tracking_uri)
    experiments = query.find_experiments(client, names, uri)
    with console.status("reading runs from MLflow"):
        finished, others = query.fetch_train_runs(client, experiments)
    where = f"experiment(s) {', '.join(repr(n) for n in names)} at {uri}"
    if not finished:
        report = build_report([], tracking_uri=uri, experiments=names, excluded=others, show_excluded=ns.include_failed)
        if ns.include_failed and others:
            print_rich(report, console)
        states = ", ".join(sorted({f"{sum(r.status == s for r in others)} {s}" for s in {r.status for r in others}}))
        unfinished = f" ({len(others)} training run(s) did not finish: {states})" if others else ""
        raise query.ReportError(f"no finished training runs in {where}{unfinished}", exit_code=1)

    report = build_report(
        finished,
        tracking_uri=uri,
        experiments=names,
        extra_keys=extra_keys,
        tolerance=ns.tolerance,
        excluded=others,
        show_excluded=ns.include_failed,
    )
    plots_dir: Path = ns.plots_dir or Path("reports") / _slug("+".join(names))
    plots = make_plots(report, client, plots_dir)
    report.plots = [str(p) for p in plots]

    run_id = None
    if not ns.no_mlflow_run:
        run_id = log_run(report, client, names[0], plots)

    if fmt == "rich":
        if ns.output is not None:
            text_console = _text_console()
            print_rich(report, text_console)
            _write(ns.output, text_console.file.getvalue())
        print_rich(report, console)
    else:
        text = render(report, fmt)
        if ns.output is not None:
            _write(ns.output, text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        print_rich(report, console)

    console.print(
        f"{len(report.groups)} configuration(s) from {sum(len(g.runs) for g in report.groups)} run(s) in {where}"
    )
    if plots:
        console.print(f"plots: {len(plots)} PNG file(s) in {plots_dir.resolve()}")
    if ns.output is not None:
        console.print(f"report ({fmt}): {ns.output.resolve()}")
    if run_id:
        console.print(
            f"MLflow report run: {run_id} in experiment '{names[0]}' (tag run_type=report; `mlflow ui` to browse)"
        )
    return 0


def _text_console() -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), width=160, color_system=None, force_terminal=False)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_plots(report: Any, client: Any, plots_dir: Path) -> list[Path]:
    """The two plots and each ptsne_moe configuration's gating map (copied from its seed-0 run)."""
    from ssmoe_cli.report import plots, query

    plots_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, fn in (("accuracy_vs_nonzero.png", plots.accuracy_vs_params), ("expert_load.png", plots.expert_load)):
        try:
            path = fn(report.groups, plots_dir / name)
        except Exception as exc:  # a plot that fails must not cost the tables
            report.notes.append(f"plot {name} failed: {type(exc).__name__}: {exc}")
            continue
        if path is None:
            report.notes.append(f"plot {name} skipped: no configuration has its metrics")
        else:
            written.append(path)
    for g in report.groups:
        if g.model != "ptsne_moe":
            continue
        run = next((r for r in g.runs if r.seed == "0"), g.runs[0])
        dest = plots_dir / f"gating_map_{g.slug}.png"
        if query.fetch_artifact(client, run.run_id, "plots/gating_map.png", dest) is None:
            report.notes.append(f"no plots/gating_map.png artifact in run {run.run_id} ({g.label})")
        else:
            written.append(dest)
    return written


def claim_metrics(report: Any) -> dict[str, float]:
    """The blanks' numbers as MLflow metrics of the report run (prefixed by context when several)."""
    out: dict[str, float] = {}
    for f in report.findings:
        prefix = "claims/" + (_slug(f.context_label) + "/" if len(report.findings) > 1 else "")
        c = f.compression
        values: dict[str, float | None] = {"compression_pct_vs_fcl": c.percent, "compression_x_vs_fcl": c.ratio}
        m = f.sgmoe.headline
        if m is not None:
            values.update(
                {
                    "acc_diff_vs_sgmoe_points": m.acc.summary.mean,
                    "acc_diff_vs_sgmoe_ci95_low": m.acc.summary.ci_low,
                    "acc_diff_vs_sgmoe_ci95_high": m.acc.summary.ci_high,
                    "acc_diff_vs_sgmoe_paired_seeds": float(m.acc.n),
                    "nonzero_ratio_sgmoe_over_ptsne": m.nonzero_ratio,
                }
            )
        out.update({prefix + k: v for k, v in values.items() if v is not None})
    return out


def log_run(report: Any, client: Any, experiment: str, plots: Sequence[Path]) -> str | None:
    """Log the report run; a failure is a note, not a lost report."""
    from ssmoe_cli.report import query
    from ssmoe_cli.report.render import to_json, to_markdown

    note = "\n\n".join(f"**{f.context_label}**: {f.sentence}" for f in report.findings)
    try:
        run_id = query.start_report_run(client, experiment, note)
        report.report_run = run_id
        query.finish_report_run(
            client,
            run_id,
            files={"plots": list(plots)},
            texts={"report.md": to_markdown(report), "report.json": to_json(report)},
            params={
                "experiments": ",".join(report.experiments),
                "group_by": ",".join(report.keys),
                "tolerance_points": f"{report.tolerance:g}",
                "runs": str(sum(len(g.runs) for g in report.groups)),
                "configurations": str(len(report.groups)),
            },
            metrics=claim_metrics(report),
        )
    except Exception as exc:
        report.notes.append(f"the report run could not be logged to MLflow: {type(exc).__name__}: {exc}")
        report.report_run = None
        return None
    return run_id
