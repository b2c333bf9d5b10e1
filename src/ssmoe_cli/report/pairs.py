"""The blanks across (dataset, architecture) pairs: each claim's verdict per pair and on how many it holds.

ShrinkBench (Blalock et al. 2020) counts a pruning claim only when it holds on several (dataset,
architecture) pairs. Each context of a report with budget sweeps (report/frontier_analysis.py: one per
value of the data and training keys, e.g. data=mnist1d) is one pair; its iso-accuracy ratios are the
blanks. Across pairs a claim is

- supported: supported on every pair, and there are at least MIN_PAIRS of them;
- not supported: not supported on some pair (one counter-example is enough);
- not measurable: otherwise (some pair cannot say, or fewer than MIN_PAIRS pairs were run).

The t-SNE gate's map quality (trustworthiness T(12) and the 1-NN accuracy of the 2-D map, on held-out
data) is given per pair too: the proposed model's least-pruned configuration, mean [95% CI] over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ssmoe_cli.metrics import GATE_KNN1_ACC, GATE_TRUSTWORTHINESS, PARAMS_NONZERO
from ssmoe_cli.report.frontier_analysis import Tradeoff, ratio_kinds
from ssmoe_cli.report.frontier_ratios import NOUN, RATIO_X, Ratio, interval_text, ratio_text
from ssmoe_cli.report.records import Group, Key
from ssmoe_cli.report.roles import Roles
from ssmoe_cli.report.verdicts import Status

MIN_PAIRS = 3  # ShrinkBench: a claim made on fewer pairs is not a general claim
DASH = "—"


@dataclass(frozen=True)
class PairCell:
    """One claim on one pair: its verdict and the ratio as the pair's report states it."""

    status: Status
    text: str


@dataclass(frozen=True)
class AcrossPairs:
    """One claim (an iso-accuracy ratio on one cost) over every pair, and the overall verdict."""

    claim: str
    cells: list[PairCell]  # in the order of `Pairs.labels`
    status: Status
    reason: str


@dataclass(frozen=True)
class GateQuality:
    """The proposed model's map quality on one pair: T(12) and 2-D 1-NN accuracy, as text."""

    configuration: str
    trustworthiness: str
    knn1: str


@dataclass(frozen=True)
class Pairs:
    labels: list[str]
    claims: list[AcrossPairs]
    gates: list[GateQuality | None]


def _cell(r: Ratio | None) -> PairCell:
    if r is None:
        return PairCell("not measurable", DASH)
    value = DASH if r.low is None or r.high is None else ratio_text(r.low, r.high)
    if r.interval is not None and r.value is not None:
        value += f" {interval_text(r.interval)}"
    return PairCell(r.status, value)


def overall(cells: Sequence[PairCell], min_pairs: int = MIN_PAIRS) -> tuple[Status, str]:
    """The verdict over pairs and why, from each pair's verdict."""
    held = sum(c.status == "supported" for c in cells)
    against = sum(c.status == "not supported" for c in cells)
    unknown = len(cells) - held - against
    counts = f"holds on {held} of {len(cells)} pair(s)"
    if against:
        return "not supported", f"{counts}; not supported on {against}"
    if unknown:
        return "not measurable", f"{counts}; not measurable on {unknown}"
    if len(cells) < min_pairs:
        return "not measurable", f"{counts}; a general claim needs at least {min_pairs} pairs"
    return "supported", counts


def _pct(s) -> str:
    if s.mean is None:
        return DASH
    ci = f" [{s.ci_low:.3f}, {s.ci_high:.3f}]" if s.ci_low is not None and s.ci_high is not None else ""
    return f"{s.mean:.3f}{ci}"


def gate_quality(groups: Sequence[Group], roles: Roles) -> GateQuality | None:
    """The proposed model's least-pruned configuration with a logged map quality (None if none)."""
    mine = [g for g in groups if roles.proposed.matches(g) and g.summary(GATE_TRUSTWORTHINESS).n]
    if not mine:
        return None
    top = max(mine, key=lambda g: g.summary(PARAMS_NONZERO).mean or 0.0)
    return GateQuality(top.label, _pct(top.summary(GATE_TRUSTWORTHINESS)), _pct(top.summary(GATE_KNN1_ACC)))


def across_pairs(
    tradeoffs: Sequence[Tradeoff],
    members: dict[Key, list[Group]],
    labels: Sequence[str],
    roles: Roles = Roles(),
) -> Pairs | None:
    """Each iso-accuracy claim per pair and overall; None with fewer than two pairs (nothing to add)."""
    if len(tradeoffs) < 2:
        return None
    claims = []
    for x in RATIO_X:
        for kind, against in ratio_kinds(roles):
            cells = [_cell(t.ratio(kind, x)) for t in tradeoffs]
            status, reason = overall(cells)
            claims.append(AcrossPairs(f"iso-accuracy ratio vs {against} on {NOUN[x]}", cells, status, reason))
    gates = [gate_quality(members.get(t.context, []), roles) for t in tradeoffs]
    return Pairs(list(labels), claims, gates)


def pair_rows(p: Pairs) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per claim, a column per pair (verdict: ratio), then the overall verdict."""
    head = ["claim", *p.labels, "overall"]
    rows = [[c.claim, *(f"{x.status}: {x.text}" for x in c.cells), f"{c.status} ({c.reason})"] for c in p.claims]
    return head, rows


def gate_rows(p: Pairs) -> tuple[list[str], list[list[str]]]:
    head = ["pair", "configuration", "trustworthiness T(12)", "2-D 1-NN accuracy"]
    rows = [
        [label, g.configuration, g.trustworthiness, g.knn1] if g is not None else [label, "no map logged", DASH, DASH]
        for label, g in zip(p.labels, p.gates, strict=True)
    ]
    return head, rows


CAPTION = (
    f"each pair: verdict: iso-accuracy ratio [95% CI] from its own trade-off curves; overall: supported on every "
    f"pair and on at least {MIN_PAIRS} pairs (ShrinkBench), not supported if any pair says so, else not measurable"
)
