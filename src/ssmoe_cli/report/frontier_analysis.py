"""The trade-off analysis of one context: series, the dense reference, the Pareto frontier per cost, the
iso-accuracy ratios (report/frontier_ratios.py) and matched budgets (report/frontier.py).

Shown only when some series has two budgets or more (`Tradeoff.applies`); otherwise the report is as
it was before budgets were swept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ssmoe_cli.metrics import PARAMS_NONZERO
from ssmoe_cli.report.claims import points
from ssmoe_cli.report.frontier import (
    SELECT,
    X_METRICS,
    Matched,
    Point,
    Reference,
    Series,
    build_series,
    dense_reference,
    headline_match,
    matched_budgets,
    pareto,
    unpruned_role,
)
from ssmoe_cli.report.frontier_iso import BOOTSTRAP_SEED, EPS, REPLICATES
from ssmoe_cli.report.frontier_ratios import RATIO_X, Engine, Ratio, iso_ratio
from ssmoe_cli.report.records import Group, Key
from ssmoe_cli.report.roles import Roles


@dataclass
class Tradeoff:
    """The trade-off curves of one context: series, reference, frontier, ratios, matched budgets."""

    context: Key
    series: list[Series]
    tolerance: float
    reference: Reference | None = None
    level: float | None = None  # A, the accuracy level (fraction)
    frontier: dict[str, list[Point]] = field(default_factory=dict)  # x metric -> Pareto points (on val/acc)
    ratios: list[Ratio] = field(default_factory=list)
    matched: list[Matched] = field(default_factory=list)
    headlines: list[tuple[str, Matched]] = field(default_factory=list)

    @property
    def applies(self) -> bool:
        """Shown only when a series has two budgets or more."""
        return any(s.is_curve for s in self.series)

    def context_label(self, names: dict[str, str]) -> str:
        """`data=mnist1d, trainer.max_epochs=20` (short key names), or `all runs`."""
        return ", ".join(f"{names.get(k, k)}={v}" for k, v in self.context) or "all runs"

    def ratio(self, kind: str, x: str = PARAMS_NONZERO) -> Ratio | None:
        return next((r for r in self.ratios if r.kind == kind and r.x == x), None)


def tradeoff(
    groups: Sequence[Group],
    keys: Sequence[str],
    tolerance: float,
    roles: Roles = Roles(),
    context: Key = (),
    replicates: int = REPLICATES,
    seed: int = BOOTSTRAP_SEED,
) -> Tradeoff:
    """Series, dense reference, Pareto frontier per x metric, the iso-accuracy ratios and matched budgets."""
    series = build_series(groups, keys)
    out = Tradeoff(context, series, tolerance, frontier={x: pareto(series, x) for x in X_METRICS})
    out.matched = matched_budgets(series, keys, roles)
    if not out.applies:
        return out
    ref = out.reference = dense_reference(groups, roles)
    dense = unpruned_role(roles)
    curves = [s for s in series if s.is_curve]
    mine = [s for s in curves if s.plays(roles.proposed)]
    fcl = [s for s in curves if s.plays(dense) and not s.plays(roles.proposed)]
    vs = [s for s in curves if s.plays(roles.versus) and not s.plays(roles.proposed)]
    if ref is None or ref.summary().mean is None:
        d = roles.dense.model
        why = (
            f"no unpruned {d} configuration with {SELECT} to be the reference (prune/sparsity 0, or "
            f"{roles.dense.describe()}): train {d} at its full size too, e.g. at the 1x budget or with prune=none"
        )
        out.ratios = [Ratio(k, a, x, "not measurable", why) for x in RATIO_X for k, a in ratio_kinds(roles)]
        return out
    ref_acc = ref.summary().mean or 0.0
    base = (
        f"iso-accuracy on validation accuracy within {points(tolerance)} of the dense {roles.dense.model}'s "
        f"{100 * ref_acc:.2f}%"
    )
    engine = Engine(ref, [*mine, *fcl, *vs], tolerance, replicates, seed)
    out.level = engine.level + EPS
    for x in RATIO_X:
        (ka, aa), (kb, ab), (kc, ac) = ratio_kinds(roles)
        out.ratios += [
            iso_ratio(ka, aa, x, engine, ref, mine, None, base),
            iso_ratio(kb, ab, x, engine, ref, mine, fcl, base),
            iso_ratio(kc, ac, x, engine, ref, mine, vs, base),
        ]
    a = out.ratio("dense")
    chosen = a.proposed.series if a is not None and a.proposed is not None else None
    for name, role in ((f"pruned {roles.dense.model}", dense), (str(roles.versus), roles.versus)):
        if (m := headline_match(out.matched, chosen, role, out.level)) is not None:
            out.headlines.append((name, m))
    return out


def ratio_kinds(roles: Roles) -> list[tuple[str, str]]:
    d = roles.dense.model
    return [("dense", f"the dense {d}"), ("pruned", f"the best pruned {d}"), ("versus", str(roles.versus))]
