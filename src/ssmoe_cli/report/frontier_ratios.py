"""Iso-accuracy ratios: the bootstrap over seeds, the best series of a role, the ratio, its interval and verdict.

The accuracy level is A = the dense reference's mean val/acc - tolerance (points). For each of
params/nonzero and params/active_per_sample, three ratios (report/frontier_iso.py has the budgets):

- (a) vs the dense model: the dense reference's x / the iso budget of the proposed model's best series;
- (b) vs the best pruned dense model (the fair baseline): the smallest iso budget among the dense
  model's series / the proposed model's smallest;
- (c) vs the compared model (--versus): its smallest iso budget / the proposed model's smallest.

"Best" is the smallest iso budget on validation accuracy. The interval is a percentile bootstrap over
seeds (B = 2000, fixed RNG seed): the seeds of every configuration (and of the reference) are
resampled independently, then A, every iso budget, both minima and the ratio are computed again, so
the choice of the best series is part of what is resampled. Verdict: supported when the interval's
lower end is above 1; not supported when it reaches 1 or below; not measurable when a configuration
involved has fewer than 2 seeds. When a budget of the point estimate is only bounded (a curve stays
within tolerance down to its smallest budget) or not reached, the ratio is a range and its interval
carries each replicate's range: the claim is still decided when that interval lies wholly above 1
(supported) or wholly below it (not supported), and is otherwise not measurable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ssmoe_cli.metrics import PARAMS_ACTIVE, PARAMS_NONZERO, TEST_ACC
from ssmoe_cli.report.claims import Status
from ssmoe_cli.report.frontier import (
    SELECT,
    Reference,
    Series,
)
from ssmoe_cli.report.frontier_iso import (
    EPS,
    Interval,
    Iso,
    iso_arrays,
    iso_budget,
    percentile_interval,
    ratio_bounds,
    resample_means,
)
from ssmoe_cli.report.intervals import Summary

RATIO_X = (PARAMS_NONZERO, PARAMS_ACTIVE)
NOUN = {PARAMS_NONZERO: "nonzero parameters", PARAMS_ACTIVE: "active parameters per sample"}


@dataclass
class Side:
    """One side of a ratio: the chosen series (None for the dense reference) and its own iso budget."""

    label: str
    iso: Iso
    series: Series | None = None
    test: str = ""  # test accuracy where the selection landed (reported, never used to choose)


def test_text(s: Summary) -> str:
    if s.mean is None:
        return ""
    ci = f" [{100 * s.ci_low:.2f}, {100 * s.ci_high:.2f}]" if s.ci_low is not None and s.ci_high is not None else ""
    return f"{100 * s.mean:.2f}%{ci}"


@dataclass
class Ratio:
    """One iso-accuracy ratio: reference budget / the proposed model's, with its interval and verdict."""

    kind: str  # dense | pruned | versus
    against: str  # in words: "the dense fcl", "the best pruned fcl", "sgmoe"
    x: str
    status: Status
    reason: str
    proposed: Side | None = None
    other: Side | None = None
    low: float | None = None  # the point estimate; low == high when both budgets are reached
    high: float | None = None
    interval: Interval | None = None
    fractions: dict[str, float] = field(default_factory=dict)  # "<side> not reached|bounded" -> share of replicates

    @property
    def value(self) -> float | None:
        return self.low if self.low is not None and self.low == self.high else None

    @property
    def claim(self) -> str:
        return f"iso-accuracy ratio vs {self.against} on {NOUN[self.x]}"


def _count(x: float) -> str:
    return f"{x:,.0f}"


def ratio_text(low: float, high: float) -> str:
    if low == high:
        return f"{low:.2f}x"
    if math.isinf(high):
        return f">= {low:.2f}x" if low > 0 else "unknown"
    return f"<= {high:.2f}x" if low == 0 else f"{low:.2f}-{high:.2f}x"


def interval_text(i: Interval) -> str:
    hi = "inf" if math.isinf(i.high) else f"{i.high:.2f}"
    return f"[{i.low:.2f}, {hi}]"


class Engine:
    """Iso budgets of the candidate series, on the observed means and on every bootstrap replicate."""

    def __init__(self, ref: Reference, cands: Sequence[Series], tolerance: float, replicates: int, seed: int):
        unique = {id(p.group): p.group for s in cands for p in s.points}  # Group is unhashable (a mutable dataclass)
        groups = [g for g in unique.values() if g.values(SELECT)]
        boot = resample_means([list(ref.val.values())] + [g.values(SELECT) for g in groups], replicates, seed)
        self.rows = {id(g): boot[i + 1] for i, g in enumerate(groups)}
        ref_mean = ref.summary().mean
        assert ref_mean is not None
        self.level = ref_mean - tolerance / 100 - EPS
        self.levels = boot[0] - tolerance / 100 - EPS

    def iso(self, s: Series, x: str) -> tuple[Iso, tuple] | None:
        """(iso budget on the observed means, (low, high) in every replicate); None below 2 points."""
        import numpy as np

        curve = s.curve(x)
        if len(curve) < 2:
            return None
        xs = [p.x(x) or 0.0 for p in curve]
        iso = iso_budget([(xv, p.group.mean(SELECT) or 0.0) for xv, p in zip(xs, curve, strict=True)], self.level)
        means = np.stack([self.rows[id(p.group)] for p in curve], axis=1)
        return iso, iso_arrays(xs, means, self.levels)


@dataclass
class _Best:
    side: Side
    low: float  # the minimum over the series, as an interval (frontier_iso's module doc)
    high: float
    reps: tuple  # (low, high) arrays of the minimum in every replicate


def _best(engine: Engine, series: Sequence[Series], x: str) -> _Best | None:
    """The smallest iso budget among the series. When a series' bound leaves it open whether it beats
    the chosen one, the side named is that series (it is what a smaller budget must be measured for)."""
    import numpy as np

    found = [(s, *r) for s in series if (r := engine.iso(s, x)) is not None]
    if not found:
        return None
    low, high = min(f[1].low for f in found), min(f[1].high for f in found)
    s, iso, _ = min(found, key=lambda f: (f[1].high, f[1].low))
    if low != high:  # not a single value: name the series whose bound or miss makes it so
        s, iso, _ = next(f for f in found if f[1].low == low and f[1].state != "reached")
    curve = s.curve(x)
    at = curve[iso.index] if iso.index is not None else None
    test = f"at {_count(at.x(x) or 0.0)}: {test_text(at.summary(TEST_ACC))}" if at is not None else ""
    reps = (np.min([f[2][0] for f in found], axis=0), np.min([f[2][1] for f in found], axis=0))
    return _Best(Side(s.label, iso, s, test), low, high, reps)


def _fractions(name: str, reps: tuple) -> dict[str, float]:
    import numpy as np

    low, high = reps
    return {f"{name} not reached": float(np.mean(np.isinf(high))), f"{name} only bounded": float(np.mean(low == 0))}


def _few_seeds(ref: Reference, sides: Sequence[Side], x: str) -> list[str]:
    few = [p.group.label for d in sides if d.series for p in d.series.curve(x) if len(p.group.values(SELECT)) < 2]
    return (["the dense reference"] if len(ref.val) < 2 else []) + few


_WHY = {
    "bounded": ("stays within tolerance down to its smallest budget", "smaller"),
    "not reached": ("is below the level even at its largest budget", "larger"),
}


def iso_ratio(
    kind: str,
    against: str,
    x: str,
    engine: Engine,
    ref: Reference,
    mine: Sequence[Series],
    theirs: Sequence[Series] | None,
    base: str,
) -> Ratio:
    """One ratio (module doc); `theirs` None: against the dense reference's own x."""
    noun, model = NOUN[x], mine[0].model if mine else "proposed"
    p = _best(engine, mine, x)
    if p is None:
        return Ratio(
            kind, against, x, "not measurable", f"no {model} series with 2 budgets or more has {x} and {SELECT}"
        )
    if theirs is None:
        ref_x = ref.x(x)
        if not ref_x:
            return Ratio(kind, against, x, "not measurable", f"{against} lacks {x}")
        side = Side(against, Iso("reached", ref_x), None, test_text(ref.summary(TEST_ACC)))
        o = _Best(side, ref_x, ref_x, (ref_x, ref_x))
    elif (found := _best(engine, theirs, x)) is None:
        who = against.removeprefix("the best ")  # "pruned fcl", or the compared model
        return Ratio(kind, against, x, "not measurable", f"no {who} series with 2 budgets or more has {x} and {SELECT}")
    else:
        o = found
    low, high = (float(v) for v in ratio_bounds((o.low, o.high), (p.low, p.high)))
    interval = percentile_interval(*ratio_bounds(o.reps, p.reps))
    # The shares are about each role's minimum over its series, so they name the model, not one series.
    fractions = _fractions(f"{model}'s budget", p.reps)
    if theirs is not None:
        fractions |= _fractions(f"{theirs[0].model}'s budget", o.reps)
    r = Ratio(kind, against, x, "not measurable", "", p.side, o.side, low, high, interval, fractions)
    if low != high:
        open_sides = [b.side for b in (p, o) if b.low != b.high]
        said = " and ".join(f"{d.label} {_WHY[d.iso.state][0]} ({_count(d.iso.value)})" for d in open_sides)
        more = " or ".join(dict.fromkeys(_WHY[d.iso.state][1] for d in open_sides))
        known = "unknown" if low == 0 and math.isinf(high) else f"only known as {ratio_text(low, high)}"
        r.reason = f"{base}, on {noun}: {said}, so the ratio is {known}"
        # A bound still decides the claim when all it allows (and its bootstrap interval, which carries
        # each replicate's range) lies on one side of 1: e.g. the pruned dense model stays accurate down
        # to its smallest budget, which is already below the proposed model's iso budget.
        decided = not _few_seeds(ref, (p.side, o.side), x)
        if decided and interval.low > 1:
            r.status = "supported"
            r.reason += f" {interval_text(interval)}: the whole interval is above 1"
        elif decided and interval.high < 1:
            r.status = "not supported"
            r.reason += f" {interval_text(interval)}: the whole interval is below 1"
        else:
            r.reason += f": measure {more} budgets"
        return r
    shares = "; ".join(f"{k} in {100 * v:.1f}%" for k, v in fractions.items() if v > 0)
    boot = f"bootstrap over seeds, B={interval.replicates}" + (f"; {shares} of replicates" if shares else "")
    text = (
        f"{base}, on {noun}: {p.side.label} needs {_count(p.low)} vs {o.side.label} {_count(o.low)}: "
        f"{ratio_text(low, high)} {interval_text(interval)} ({boot})"
    )
    tests = [f"{d.label} {d.test}" for d in (p.side, o.side) if d.test]
    if tests:
        text += f"; test accuracy at the chosen budgets: {', '.join(tests)}"
    few = _few_seeds(ref, (p.side, o.side), x)
    if few:
        r.reason = f"{text}; fewer than 2 seeds: {', '.join(few)}"
    elif interval.low > 1:
        r.status, r.reason = "supported", f"{text}; the interval is above 1"
    else:
        r.status = "not supported"
        r.reason = f"{text}; the interval {'includes 1' if interval.high >= 1 else 'is below 1'}"
    return r
