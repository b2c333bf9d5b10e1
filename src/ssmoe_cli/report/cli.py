"""`ssmoe report`: summarise training runs over seeds, fill the paper's two blanks, write tables and plots.

Reads the MLflow store `ssmoe train` writes (same defaults), prints rich tables (or writes markdown /
CSV / JSON / HTML), saves PNG plots, and with --log-run logs all of it as a run of type "report".
docs/report.md describes the grouping rule, the intervals and every option.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from ssmoe_cli.report.render import FORMATS
from ssmoe_cli.report.roles import DEFAULT_DENSE, DEFAULT_PROPOSED, DEFAULT_VERSUS

EPILOG = f"""examples:
  ssmoe report                           the experiment of the newest finished training run
  ssmoe report --experiment paper --format markdown > table.md
  ssmoe report -e sweep_a -e sweep_b --output report.html --intervals
  ssmoe report --group-by tags.sweep_id --tolerance 0.5 --log-run

Rows are configurations: runs that agree on every config key except the seed (keys that differ
among the selected runs are named in the row). One run per seed counts; a repeated seed's older
runs are set aside and listed. Cells are mean ± std over seeds; --intervals adds 95% confidence
intervals (Student t, cut to what the metric can take: accuracy stays within 0-100%).

The paper's blanks: (1) percent fewer nonzero parameters of the proposed model's configuration with
the fewest nonzero parameters among those within --tolerance points of the dense model's accuracy;
(2) proposed vs --versus at the same pruning: accuracy difference paired by seed with a 95% CI, and
the nonzero-parameter ratio. Roles default to --proposed {DEFAULT_PROPOSED} --dense {DEFAULT_DENSE}
--versus {DEFAULT_VERSUS}.

Details: docs/report.md.
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


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one `ssmoe: error:` line, like every other ssmoe error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ssmoe: error: {message} (see ssmoe report --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ssmoe report",
        description="Summarise `ssmoe train` runs over seeds (mean ± std, 95% CI), fill the paper's two blanks "
        "(compression vs the dense model, improvement vs SGMoE), write tables and plots.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    add(
        "-e",
        "--experiment",
        action="append",
        dest="experiments",
        metavar="NAME",
        help="MLflow experiment to read; repeat for several (default: the one with the newest training run)",
    )
    add(
        "--group-by",
        action="append",
        default=[],
        metavar="KEY[,KEY]",
        help="split rows further by a tag (tags.sweep_id) or a param (params.NAME) that is not part of the config",
    )
    add("--tolerance", type=float, default=1.0, metavar="POINTS", help="accuracy tolerance of blank 1 (default: 1.0)")
    add("--proposed", default=DEFAULT_PROPOSED, metavar="MODEL[:K=V,...]", help="the proposed model's runs")
    add("--dense", default=DEFAULT_DENSE, metavar="MODEL[:K=V,...]", help="the dense baseline's runs")
    add(
        "--versus",
        default=DEFAULT_VERSUS,
        metavar="MODEL[:K=V,...]",
        help="the model the proposed one is compared with",
    )
    add(
        "--format",
        choices=FORMATS,
        help="rich (terminal tables, the default) or a file format; markdown/csv/json/html go to stdout "
        "unless --output is given (default: from the --output suffix, else rich)",
    )
    add("-o", "--output", type=Path, metavar="FILE", help="write the formatted report to FILE")
    add("--intervals", action="store_true", help="terminal: also print the 95%% confidence intervals")
    add("--plots-dir", type=Path, metavar="DIR", help="where the PNG plots go (default: reports/<experiment>/)")
    add("--include-failed", action="store_true", help="also list the training runs that did not finish")
    add(
        "--log-run",
        action="store_true",
        help="also log the report as an MLflow run (run_type=report) in the first experiment: one new run per call",
    )
    # The old opt-out, now the default: still accepted so that scripts keep working.
    add("--no-mlflow-run", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(args: list[str]) -> int:
    """Entry point of `ssmoe report`; returns the exit status."""
    parser = build_parser()
    ns = parser.parse_args(args)
    if ns.tolerance < 0:
        parser.error("--tolerance must be >= 0")
    from ssmoe_cli.report.roles import Role, Roles

    try:
        ns.roles = Roles(*(Role.parse(getattr(ns, n)) for n in ("proposed", "dense", "versus")))
    except ValueError as exc:
        parser.error(str(exc))
    fmt = ns.format or (SUFFIX_FORMATS.get(ns.output.suffix.lower()) if ns.output else None) or "rich"
    # MLflow draws a progress bar for every artifact it downloads (the gating maps): noise here.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from rich.console import Console

    from ssmoe_cli.report.query import ReportError

    # A file format on stdout (`> table.md`): stdout holds that format only, stderr a short note.
    machine_stdout = ns.output is None and fmt != "rich"
    console = Console(stderr=machine_stdout)
    try:
        return run(ns, fmt, console, notes_only=machine_stdout)
    except ReportError as exc:
        print(f"ssmoe: error: {exc}", file=sys.stderr)
        return exc.exit_code


def run(ns: argparse.Namespace, fmt: str, console: Any, notes_only: bool = False) -> int:
    from ssmoe_cli.report import ablation_text, query
    from ssmoe_cli.report.build import build_report
    from ssmoe_cli.report.publish import log_run, make_plots, slug
    from ssmoe_cli.report.render import render
    from ssmoe_cli.report.terminal import print_rich

    extra_keys = [k.strip() for arg in ns.group_by for k in arg.split(",") if k.strip()]
    client, uri = query.open_client(ns.tracking_uri)
    if ns.experiments:
        experiments = query.find_experiments(client, ns.experiments, uri)
    else:
        experiments = [query.latest_experiment(client, uri)]
        others = [n for n in query.experiments_with_runs(client) if n != experiments[0].name]
        more = f"; others with training runs: {', '.join(others)}" if others else ""
        print(
            f"ssmoe report: reading experiment '{experiments[0].name}' (the newest finished training run is there; "
            f"choose with -e NAME{more})",
            file=sys.stderr,
        )
    names = [e.name for e in experiments]
    with console.status("reading runs from MLflow"):
        finished, others = query.fetch_train_runs(client, experiments)
    where = f"experiment(s) {', '.join(repr(n) for n in names)} at {uri}"
    common = {"tracking_uri": uri, "experiments": names, "roles": ns.roles, "excluded": others}
    if not finished:
        if ns.include_failed and others:
            print_rich(build_report([], show_excluded=True, **common), console)
        states = ", ".join(sorted({f"{sum(r.status == s for r in others)} {s}" for s in {r.status for r in others}}))
        unfinished = f" ({len(others)} training run(s) did not finish: {states})" if others else ""
        raise query.ReportError(f"no finished training runs in {where}{unfinished}", exit_code=1)

    report = build_report(
        finished, extra_keys=extra_keys, tolerance=ns.tolerance, show_excluded=ns.include_failed, **common
    )
    plots_dir: Path = ns.plots_dir or Path("reports") / slug("+".join(names))
    plots = make_plots(report, client, plots_dir)
    report.plots = [str(p) for p in plots]
    routing = ablation_text.of(report)  # the gates of a routing ablation against ptsne (report/ablation.py)
    run_id = log_run(report, client, names[0], plots) if ns.log_run else None
    if run_id and routing:  # the report run's report.md is rendered without it: the ablation beside it
        client.log_text(run_id, ablation_text.markdown(routing), "ablation.md")

    base = ns.output.parent if ns.output is not None else None
    if fmt == "rich" and ns.output is not None:
        text_console = _text_console()
        print_rich(report, text_console, intervals=True)
        ablation_text.print_rich(routing, text_console)
        _write(ns.output, text_console.file.getvalue())
    elif fmt != "rich":
        text = ablation_text.amend(render(report, fmt, base), fmt, routing)
        if ns.output is not None:
            _write(ns.output, text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    if not notes_only:
        print_rich(report, console, intervals=ns.intervals)
        ablation_text.print_rich(routing, console)

    runs = sum(len(g.runs) for g in report.groups)
    lines = [f"{len(report.groups)} configuration(s) from {runs} run(s) in {where}"]
    if notes_only:
        lines[0] += f"; {fmt} on stdout" + (f", {len(report.notes)} note(s) in it" if report.notes else "")
    if plots:
        lines.append(f"plots: {len(plots)} PNG file(s) in {plots_dir.resolve()}")
    if ns.output is not None:
        lines.append(f"report ({fmt}): {ns.output.resolve()}")
    if run_id:
        lines.append(f"MLflow report run: {run_id} in experiment '{names[0]}' (tag run_type=report)")
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)
    return 0


def _text_console() -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), width=160, color_system=None, force_terminal=False)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
