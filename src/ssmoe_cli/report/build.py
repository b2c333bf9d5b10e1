"""The whole report before rendering: configurations, their statistics, the claims and the filled
sentence per context, notes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ssmoe_cli import metrics as M
from ssmoe_cli.report.claims import (
    NETWORK_TAGS,
    CompressionBlank,
    Findings,
    VersusBlank,
    ci_text,
    compression_vs_dense,
    headline_claims,
    points,
    versus,
)
from ssmoe_cli.report.frontier_analysis import Tradeoff, tradeoff
from ssmoe_cli.report.frontier_ratios import Ratio, interval_text, ratio_text
from ssmoe_cli.report.pairs import Pairs, across_pairs
from ssmoe_cli.report.records import BASE_KEYS, PARAM, Group, Key, RunRecord, group_runs, short_names
from ssmoe_cli.report.roles import Roles, size_phrase

# Params under these parts of the config say which network was trained; the others (data, optim,
# trainer, ...) are the context within which networks are compared.
_NETWORK_PARTS = ("model.", "prune.", "gating.", "topology.")
# The values each metric can take: confidence intervals are cut to them (report/intervals.py).
BOUNDS = {m.name: m.bounds for m in M.ALL}


@dataclass
class Report:
    """Everything `ssmoe report` shows, before rendering."""

    tracking_uri: str
    experiments: list[str]
    keys: list[str]  # the keys row labels show (model, prune, then what varies)
    groups: list[Group]
    metrics: list[M.Metric]  # the columns: metrics.REPORT logged by at least one run
    findings: list[Findings]
    tolerance: float
    tradeoffs: list[Tradeoff] = field(default_factory=list)  # per context, those with a series of >= 2 budgets
    pairs: Pairs | None = None  # the tradeoffs' claims side by side, when there are two contexts or more
    roles: Roles = field(default_factory=Roles)
    excluded: list[RunRecord] = field(default_factory=list)  # train runs not FINISHED
    show_excluded: bool = False  # --include-failed: list them
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    report_run: str | None = None

    @property
    def names(self) -> dict[str, str]:
        """Each shown key's short name (column headers, labels)."""
        return short_names(self.keys)

    @property
    def set_aside(self) -> list:
        return [s for g in self.groups for s in g.set_aside]


def _blank1_text(blank: CompressionBlank) -> str:
    if blank.percent is None or blank.ratio is None:
        return "?"
    return f"{blank.percent:.1f} percent ({size_phrase(blank.ratio, digits=1)})"


def _blank2_text(blank: VersusBlank) -> str:
    m = blank.headline
    if m is None:
        return "?"
    s = m.acc.summary
    acc = "? point accuracy difference (no paired seeds)"
    if s.mean is not None:
        acc = f"{s.mean:+.2f} point ({ci_text(m.acc)}) accuracy difference"
    size = "? nonzero-parameter ratio" if m.nonzero_ratio is None else size_phrase(m.nonzero_ratio)
    return f"{acc} and {size} ({m.setting_label})"


def sentence(compression: CompressionBlank, other: VersusBlank, roles: Roles = Roles()) -> str:
    """The abstract's sentence with both blanks filled from the data ("?" where not measurable)."""
    return (
        f"This model ({roles.proposed}) achieves a compression ratio of {_blank1_text(compression)} over the "
        f"dense {roles.dense} network and a {_blank2_text(other)} over {roles.versus} networks while achieving "
        "similar performance metrics."
    )


def _iso_text(r: Ratio | None) -> str:
    if r is None or r.low is None or r.high is None:
        return "?"
    if r.value is None:  # one side only bounded or not reached: the bound it allows, said as such
        return "?" if r.low == 0 and math.isinf(r.high) else f"{ratio_text(r.low, r.high)} (only bounded)"
    return f"{r.value:.2f}x (95% CI {interval_text(r.interval)[1:-1]})" if r.interval else f"{r.value:.2f}x"


def iso_sentence(t: Tradeoff, roles: Roles = Roles()) -> str:
    """The abstract's sentence from the iso-accuracy ratios on nonzero parameters, naming its reference."""
    d, b = roles.dense.model, t.ratio("pruned")
    ref = t.reference.summary().mean if t.reference is not None else None
    acc = "?" if ref is None else f"{100 * ref:.2f}%"
    best = f", {b.other.label}" if b is not None and b.other is not None else ""
    return (
        f"This model ({roles.proposed}) achieves a compression ratio of {_iso_text(t.ratio('dense'))} over the dense "
        f"{d} network and a {_iso_text(t.ratio('versus'))} improvement over {roles.versus} networks while achieving "
        f"similar performance metrics (iso-accuracy on nonzero parameters: the fewest at which validation accuracy "
        f"stays within {points(t.tolerance)} of the dense {d}'s {acc}; against the best pruned {d}{best}: "
        f"{_iso_text(b)})."
    )


def context_keys(keys: Sequence[str]) -> list[str]:
    """Shown keys that are not about the network (data, training settings, user keys): blanks per value."""
    return [
        k
        for k in keys
        if k not in (*BASE_KEYS, *NETWORK_TAGS)
        and not (k.startswith(PARAM) and k[len(PARAM) :].startswith(_NETWORK_PARTS))
    ]


def contexts(groups: Sequence[Group], keys: Sequence[str]) -> dict[Key, list[Group]]:
    """The groups per context: each value of the context keys (networks are compared within one)."""
    ckeys = context_keys(keys)
    out: dict[Key, list[Group]] = {}
    for g in groups:
        out.setdefault(tuple((k, g.value(k)) for k in ckeys), []).append(g)
    return out


def analyse(groups: Sequence[Group], keys: Sequence[str], tolerance: float, roles: Roles = Roles()) -> list[Findings]:
    """The two blanks, the sentence and the claims, once per context (e.g. per data set)."""
    names = short_names(keys)
    findings = []
    for ctx, members in contexts(groups, keys).items():
        blank1 = compression_vs_dense(members, tolerance, roles)
        blank2 = versus(members, keys, prefer=blank1.chosen, roles=roles)
        # Blank 1, then the headline pair's four claims (accuracy, compression, load balance, correlation).
        claims = [blank1.claim, *headline_claims(blank2, roles)]
        findings.append(Findings(ctx, names, blank1, blank2, sentence(blank1, blank2, roles), claims))
    return findings


def _notes(report: Report, runs: Sequence[RunRecord], extra_keys: Sequence[str]) -> list[str]:
    notes = []
    absent = [m.name for m in map(M.get, M.REPORT) if m not in report.metrics]
    if runs and absent:
        notes.append(f"not logged by any selected run: {', '.join(absent)}")
    unknown = [k for k in extra_keys if runs and all(run.get(k) is None for run in runs)]
    if unknown:  # most likely a typo (params.x vs tags): say so rather than show a column of dashes
        notes.append(f"no selected run has the grouping key(s): {', '.join(unknown)} (tags: NAME; params: params.NAME)")
    for g in report.groups:
        for s in g.set_aside:
            notes.append(
                f"set aside {s.run.label}: seed {s.run.seed} of {g.label} again, "
                f"and the later run {s.kept.label} counts (one sample per seed)"
            )
    single = [g.label for g in report.groups if len(g.runs) == 1]
    if single:
        notes.append(f"{len(single)} configuration(s) with a single run: std and CI are n/a ({'; '.join(single)})")
    partial = sorted(
        {m.name for g in report.groups for m in report.metrics if 0 < g.summary(m.name).n < len(g.runs)},
        key=list(M.REPORT).index,
    )
    if partial:
        notes.append(f"missing in some runs (n per cell is shown): {', '.join(partial)}")
    if report.excluded:
        how = "listed below" if report.show_excluded else "--include-failed lists them"
        notes.append(f"{len(report.excluded)} training run(s) not FINISHED were left out ({how})")
    return notes


def build_report(
    runs: Sequence[RunRecord],
    *,
    tracking_uri: str = "",
    experiments: Sequence[str] = (),
    extra_keys: Sequence[str] = (),
    tolerance: float = 1.0,
    roles: Roles = Roles(),
    excluded: Sequence[RunRecord] = (),
    show_excluded: bool = False,
) -> Report:
    """Group finished training runs, summarise the metrics and fill the blanks."""
    groups, keys = group_runs(runs, extra_keys, bounds=BOUNDS)
    groups.sort(key=lambda g: roles.rank(g.model))  # stable: within a rank, the grouping's order
    columns = [M.get(name) for name in M.REPORT if any(run.metric(name) is not None for run in runs)]
    report = Report(
        tracking_uri=tracking_uri,
        experiments=list(experiments),
        keys=keys,
        groups=groups,
        metrics=columns,
        findings=analyse(groups, keys, tolerance, roles) if groups else [],
        tolerance=tolerance,
        roles=roles,
        excluded=list(excluded),
        show_excluded=show_excluded,
    )
    members_of = contexts(groups, keys)
    for ctx, members in members_of.items():
        t = tradeoff(members, keys, tolerance, roles, context=ctx)
        if t.applies:  # budgets were swept: the curves fill the sentence (iso-accuracy, not one operating point)
            report.tradeoffs.append(t)
            for f in report.findings:
                if f.context == ctx:
                    f.sentence = iso_sentence(t, roles)
    labels = [t.context_label(report.names) for t in report.tradeoffs]
    report.pairs = across_pairs(report.tradeoffs, members_of, labels, roles)
    report.notes = _notes(report, runs, extra_keys)
    return report
