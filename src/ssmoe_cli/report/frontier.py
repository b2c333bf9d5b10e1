"""Trade-off curves from configurations: series over budgets, the dense reference, the Pareto frontier and
matched-budget comparisons (pure: no MLflow, no matplotlib).

A series is the configurations that agree on every identity key except the budget
(`prune.target_nonzero`, `prune.target_sparsity`, `prune.density`): one model, one prune method, one
setting of everything else. Its points are those configurations, largest first (by mean
`params/nonzero`). A series with a single budget is not a curve: it is listed, but takes no part in
iso-accuracy budgets. Accuracy levels and selections use validation accuracy (`val/acc`); test
accuracy is only reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ssmoe_cli.metrics import FLOPS, INFER_MS_B1, PARAMS_ACTIVE, PARAMS_NONZERO, PRUNE_SPARSITY, TEST_ACC, VAL_ACC
from ssmoe_cli.report.claims import match_keys
from ssmoe_cli.report.intervals import Paired, Summary, paired_differences, summarize
from ssmoe_cli.report.records import BASE_KEYS, PARAM, Group, Key, identity_keys
from ssmoe_cli.report.roles import Role, Roles

BUDGET_KEYS = (PARAM + "prune.target_nonzero", PARAM + "prune.target_sparsity", PARAM + "prune.density")
X_METRICS = (PARAMS_NONZERO, PARAMS_ACTIVE, FLOPS, INFER_MS_B1)
Y_METRICS = (VAL_ACC, TEST_ACC)
SELECT = VAL_ACC  # what every choice here is made on


@dataclass
class Point:
    """One configuration of a series, at one budget."""

    group: Group
    budget: Key  # the budget keys' values (those that vary among the runs)

    def budget_label(self, names: dict[str, str]) -> str:
        return ", ".join(f"{names.get(k, k.rsplit('.', 1)[-1])}={v}" for k, v in self.budget if v is not None) or "—"

    def x(self, metric: str) -> float | None:
        return self.group.mean(metric)

    def summary(self, metric: str) -> Summary:
        return self.group.summary(metric)


@dataclass
class Series:
    """Configurations that differ only in their budget, largest budget first."""

    label: str
    key: Key  # the shown keys less the budget keys, with their values
    points: list[Point]

    @property
    def model(self) -> str | None:
        return self.points[0].group.model

    @property
    def prune(self) -> str | None:
        return self.points[0].group.prune

    @property
    def is_curve(self) -> bool:
        return len(self.points) >= 2

    def value(self, key: str) -> str | None:
        return self.points[0].group.value(key)

    def plays(self, role: Role) -> bool:
        return all(role.matches(p.group) for p in self.points)

    def curve(self, x: str, y: str = SELECT) -> list[Point]:
        """The points that have both metrics, largest x first."""
        pts = [p for p in self.points if (p.x(x) or 0) > 0 and p.group.mean(y) is not None]
        return sorted(pts, key=lambda p: -(p.x(x) or 0.0))


def build_series(groups: Sequence[Group], keys: Sequence[str]) -> list[Series]:
    """Group configurations into series (module doc), in the order of their first configuration."""
    runs = [r for g in groups for r in g.runs]
    identity = identity_keys(runs)
    budget = [k for k in BUDGET_KEYS if k in identity or k in keys]
    fixed = [k for k in dict.fromkeys([*identity, *keys]) if k not in BUDGET_KEYS]
    buckets: dict[tuple, list[Group]] = {}
    for g in groups:
        buckets.setdefault(tuple(g.value(k) for k in fixed), []).append(g)
    out = []
    for members in buckets.values():
        first = members[0]
        key = tuple((k, v) for k, v in first.key if k not in BUDGET_KEYS)
        names = first.names
        label = " / ".join(
            [str(first.model), str(first.prune)]
            + [f"{names.get(k, k)}={v}" for k, v in key if k not in BASE_KEYS and v is not None]
        )
        # Only the budget keys that vary within the series: with prune.target_nonzero swept, the
        # target_sparsity (or density) every point also carries is ignored by training, never a budget.
        varying = [k for k in budget if len({g.value(k) for g in members}) > 1] or budget
        pts = [Point(g, tuple((k, g.value(k)) for k in varying)) for g in members]
        pts.sort(key=lambda p: -(p.x(PARAMS_NONZERO) or 0.0))  # stable: unmeasured ones keep their order
        out.append(Series(label, key, pts))
    return out


# --------------------------------------------------------------------------- the dense reference


@dataclass
class Reference:
    """The dense baseline's unpruned configuration(s), pooled by seed (one value per seed)."""

    groups: list[Group]
    val: dict[str, float]  # seed -> val/acc, averaged over the pooled configurations with that seed
    test: dict[str, float]

    @property
    def label(self) -> str:
        return "; ".join(g.label for g in self.groups)

    def summary(self, metric: str = SELECT) -> Summary:
        return summarize((self.val if metric == VAL_ACC else self.test).values(), bounds=(0.0, 1.0))

    def x(self, metric: str) -> float | None:
        means = [m for g in self.groups if (m := g.mean(metric)) is not None]
        return math.fsum(means) / len(means) if means else None


def unpruned_role(roles: Roles) -> Role:
    """The dense role without its prune narrowing: the dense model's pruned series play it too."""
    return Role(roles.dense.model, tuple((k, v) for k, v in roles.dense.where if k != "prune"))


def _pool(groups: Sequence[Group], metric: str) -> dict[str, float]:
    seeds: dict[str, list[float]] = {}
    for g in groups:
        for seed, v in g.by_seed(metric).items():
            seeds.setdefault(seed, []).append(v)
    return {s: math.fsum(vs) / len(vs) for s, vs in seeds.items()}


def dense_reference(groups: Sequence[Group], roles: Roles) -> Reference | None:
    """The dense model's unpruned configurations: those of the dense role itself (e.g. prune=none) and those
    whose mean prune/sparsity is 0 (a 1x budget); the largest mean nonzero among them. Only when no run
    logs prune/sparsity, the largest mean nonzero alone. None when there is none: a pruned network is
    never the reference. Several prune methods at the 1x budget train the same network: their runs are
    pooled by seed (a seed in several of them counts once, at the mean of its values)."""
    role = unpruned_role(roles)
    cands = [g for g in groups if role.matches(g) and (g.mean(PARAMS_NONZERO) or 0) > 0]
    if any(g.mean(PRUNE_SPARSITY) is not None for g in cands):
        cands = [g for g in cands if roles.dense.matches(g) or _unpruned(g)]
    if not cands:
        return None
    top = max(g.mean(PARAMS_NONZERO) or 0.0 for g in cands)
    pooled = [g for g in cands if (g.mean(PARAMS_NONZERO) or 0.0) >= top * (1 - 1e-6)]
    return Reference(pooled, _pool(pooled, VAL_ACC), _pool(pooled, TEST_ACC))


def _unpruned(g: Group) -> bool:
    sparsity = g.mean(PRUNE_SPARSITY)
    return sparsity is not None and sparsity <= 1e-6


# --------------------------------------------------------------------------- Pareto frontier


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats: fewer-or-equal cost and higher-or-equal
    accuracy, strictly better in one. Sorted by cost."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((xo <= x and yo >= y) and (xo < x or yo > y) for j, (xo, yo) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto(series: Sequence[Series], x: str, y: str = SELECT) -> list[Point]:
    """The points of all series on the (x, y) Pareto frontier (fewest x for the highest y), by x."""
    pts = [p for s in series for p in s.curve(x, y)]
    return [pts[i] for i in pareto_front([(p.x(x) or 0.0, p.group.mean(y) or 0.0) for p in pts])]


# --------------------------------------------------------------------------- matched budgets


@dataclass
class Matched:
    """The proposed model and a compared one at the same budget: accuracy differences paired by seed."""

    proposed: Series
    other: Series
    p: Point
    o: Point
    val: Paired  # points, proposed - other
    test: Paired


def _compatible(a: Series, b: Series, keys: Sequence[str]) -> bool:
    """Same prune method and every other shared non-network key (claims.match_keys), budgets aside."""
    for k in match_keys([k for k in keys if k not in BUDGET_KEYS]):
        va, vb = a.value(k), b.value(k)
        if va is not None and vb is not None and va != vb:
            return False
    return True


def matched_budgets(series: Sequence[Series], keys: Sequence[str], roles: Roles) -> list[Matched]:
    """Every budget shared by a proposed series and a compatible series of the dense model or the compared one."""
    mine = [s for s in series if s.plays(roles.proposed)]
    dense, versus = unpruned_role(roles), roles.versus
    theirs = [s for s in series if (s.plays(dense) or s.plays(versus)) and not s.plays(roles.proposed)]
    out = []
    for p in mine:
        for o in theirs:
            if not _compatible(p, o, keys):
                continue
            at = {pt.budget: pt for pt in o.points if pt.budget and any(v is not None for _, v in pt.budget)}
            for pt in p.points:
                if (other := at.get(pt.budget)) is not None:
                    val = paired_differences(pt.group.by_seed(VAL_ACC), other.group.by_seed(VAL_ACC), 100.0)
                    test = paired_differences(pt.group.by_seed(TEST_ACC), other.group.by_seed(TEST_ACC), 100.0)
                    out.append(Matched(p, o, pt, other, val, test))
    return out


def headline_match(
    matched: Sequence[Matched], chosen: Series | None, role: Role, level: float | None
) -> Matched | None:
    """The matched budget to headline against `role`, chosen on validation only: the proposed's chosen
    series vs the role's series with the same setting; the smallest shared budget at which the proposed
    point's mean val/acc is at or above `level`, else the largest shared budget."""
    pairs = [m for m in matched if m.proposed is chosen and m.other.plays(role)]
    if not pairs:
        return None
    within = [m for m in pairs if level is not None and (m.p.group.mean(VAL_ACC) or -1.0) >= level]
    if within:
        return min(within, key=lambda m: m.p.x(PARAMS_NONZERO) or math.inf)
    return max(pairs, key=lambda m: m.p.x(PARAMS_NONZERO) or 0.0)
