"""What `ssmoe report` writes besides its tables: PNG plots, and (with --log-run) a report run in MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ssmoe_cli import metrics as M
from ssmoe_cli.report.build import Report

GATING_MAP = "plots/gating_map.png"
# A run that logged one of these has a gate with a 2-D map, hence a gating-map artifact.
_MAP_METRICS = tuple(m.name for m in M.ALL if m.scope == "map")


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def make_plots(report: Report, client: Any, plots_dir: Path) -> list[Path]:
    """The two summary plots, and the gating map (from its seed-0 run) of each configuration that has one."""
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
    written += _tradeoff_plots(report, plots_dir)
    for g in report.groups:
        if not any(g.summary(m).n for m in _MAP_METRICS):
            continue  # no gate with a map: no gating-map artifact to look for
        run = next((r for r in g.runs if r.seed == "0"), g.runs[0])
        dest = plots_dir / f"gating_map_{g.slug}.png"
        if query.fetch_artifact(client, run.run_id, GATING_MAP, dest) is None:
            report.notes.append(f"no {GATING_MAP} artifact in run {run.run_id} ({g.label})")
        else:
            written.append(dest)
    return written


def _tradeoff_plots(report: Report, plots_dir: Path) -> list[Path]:
    """The trade-off figures of each context with budget sweeps (a context's slug in the name when several)."""
    from ssmoe_cli.report.frontier_plots import tradeoff_plots
    from ssmoe_cli.report.frontier_text import context_label

    written: list[Path] = []
    for t in report.tradeoffs:
        label = context_label(t, report.names)
        several = len(report.tradeoffs) > 1
        try:
            written += tradeoff_plots(t, plots_dir, "_" + slug(label) if several else "", label if several else "")
        except Exception as exc:  # a plot that fails must not cost the tables
            report.notes.append(f"trade-off plots ({label}) failed: {type(exc).__name__}: {exc}")
    return written


def claim_metrics(report: Report) -> dict[str, float]:
    """The blanks' numbers as MLflow metrics of the report run (prefixed by context when several).

    Names follow the roles: with the defaults, claims/compression_pct_vs_fcl, claims/acc_diff_vs_sgmoe_points, ...
    """
    r = report.roles
    out: dict[str, float] = {}
    for f in report.findings:
        prefix = "claims/" + (slug(f.context_label) + "/" if len(report.findings) > 1 else "")
        c = f.compression
        values: dict[str, float | None] = {
            f"compression_pct_vs_{r.dense}": c.percent,
            f"compression_x_vs_{r.dense}": c.ratio,
        }
        m = f.versus.headline
        if m is not None:
            values.update(
                {
                    f"acc_diff_vs_{r.versus}_points": m.acc.summary.mean,
                    f"acc_diff_vs_{r.versus}_ci95_low": m.acc.summary.ci_low,
                    f"acc_diff_vs_{r.versus}_ci95_high": m.acc.summary.ci_high,
                    f"acc_diff_vs_{r.versus}_paired_seeds": float(m.acc.n),
                    f"nonzero_ratio_{r.versus}_over_{r.proposed}": m.nonzero_ratio,
                }
            )
        out.update({prefix + slug(k): v for k, v in values.items() if v is not None})
    for t in report.tradeoffs:
        out.update(_iso_metrics(t, report))
    return out


def _iso_metrics(t: Any, report: Report) -> dict[str, float]:
    """The iso-accuracy ratios as metrics: claims/iso_{nonzero,active}_vs_{fcl,pruned_fcl,sgmoe}[_ci95_low|high]
    with the default roles."""
    from ssmoe_cli.report.frontier_text import context_label

    prefix = "claims/" + (slug(context_label(t, report.names)) + "/" if len(report.tradeoffs) > 1 else "")
    d, v = report.roles.dense.model, report.roles.versus.model
    against = {"dense": d, "pruned": f"pruned_{d}", "versus": v}
    out: dict[str, float] = {}
    for r in t.ratios:
        name = f"{prefix}iso_{'nonzero' if r.x == M.PARAMS_NONZERO else 'active'}_vs_{slug(against[r.kind])}"
        if r.value is not None and r.interval is not None:
            out[name] = r.value
            out[f"{name}_ci95_low"] = r.interval.low
            if r.interval.high < float("inf"):
                out[f"{name}_ci95_high"] = r.interval.high
    return out


def log_run(report: Report, client: Any, experiment: str, plots: Sequence[Path]) -> str | None:
    """Log the report as a run (run_type=report) of `experiment`; a failure is a note, not a lost report."""
    from ssmoe_cli.report import query
    from ssmoe_cli.report.render import to_json, to_markdown

    # Inside the run, the plots sit in plots/ beside report.md: link them there.
    in_run = replace(report, plots=[f"plots/{Path(p).name}" for p in plots])
    note = "\n\n".join(f"**{f.context_label}**: {f.sentence}" for f in report.findings)
    try:
        run_id = query.start_report_run(client, experiment, note)
        report.report_run = run_id
        query.finish_report_run(
            client,
            run_id,
            files={"plots": list(plots)},
            texts={"report.md": to_markdown(in_run, base=Path.cwd()), "report.json": to_json(report)},
            params={
                "experiments": ",".join(report.experiments),
                "group_by": ",".join(report.keys),
                "tolerance_points": f"{report.tolerance:g}",
                "roles": "; ".join(
                    f"{n}: {getattr(report.roles, n).describe()}" for n in ("proposed", "dense", "versus")
                ),
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
