"""Iso-accuracy budgets and their bootstrap over seeds: the arithmetic only (no groups, labels or text).

The iso-accuracy budget of a curve (points (budget x, mean accuracy y)) at an accuracy level A is the
smallest budget at which the curve stays at or above A: walk from the largest budget down to the
first point whose mean falls below A, then interpolate linearly in log budget between it and the
last point at or above A. Two cases have no number and are never extrapolated:

- bounded: every point is >= A, so the budget is at most the smallest measured one (0 < iso <= x_min);
- not reached: the largest budget is already below A (iso > x_max, if it exists at all).

Every iso budget is therefore an interval [low, high]: [v, v] when reached, [0, x_min] when bounded,
[x_max, inf] when not reached. Minima and ratios of iso budgets are computed on these intervals, so
a bound is carried through honestly instead of being read as a measurement (report/frontier_ratios.py
says what is reported). The replicates of the bootstrap use the same rule, vectorised with numpy
(imported on use: the report's import path stays light).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

IsoState = Literal["reached", "bounded", "not reached"]
REPLICATES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same runs always give the same interval
EPS = 1e-12  # a mean exactly at the level counts as at the level (float noise in ref - tolerance)


@dataclass(frozen=True)
class Iso:
    """One curve's iso-accuracy budget; `value` is the budget (reached), the smallest measured budget
    (bounded: the iso budget is at most this) or the largest measured one (not reached: at least this).
    `index`: in the curve sorted largest budget first, the last point at or above the level (None when
    not reached)."""

    state: IsoState
    value: float
    index: int | None = None

    @property
    def low(self) -> float:
        return 0.0 if self.state == "bounded" else self.value

    @property
    def high(self) -> float:
        return math.inf if self.state == "not reached" else self.value


def iso_budget(curve: Sequence[tuple[float, float]], level: float) -> Iso:
    """The iso-accuracy budget of (budget, mean accuracy) points at `level` (module doc).

    Budgets must be > 0 (they are interpolated in log budget).
    """
    if not curve:
        raise ValueError("iso_budget needs at least one point")
    pts = sorted(curve, key=lambda p: -p[0])
    if any(x <= 0 for x, _ in pts):
        raise ValueError("iso_budget interpolates in log budget: budgets must be > 0")
    if pts[0][1] < level:
        return Iso("not reached", pts[0][0])
    for i in range(1, len(pts)):
        if pts[i][1] < level:
            (x_hi, y_hi), (x_lo, y_lo) = pts[i - 1], pts[i]
            t = (y_hi - level) / (y_hi - y_lo)  # y_hi >= level > y_lo: 0 <= t < 1
            return Iso("reached", math.exp(math.log(x_hi) + t * (math.log(x_lo) - math.log(x_hi))), i - 1)
    return Iso("bounded", pts[-1][0], len(pts) - 1)


def iso_arrays(xs: Sequence[float], means: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`iso_budget` in every replicate at once: (low, high), each of shape (B,).

    xs: the P budgets, largest first; means: (B, P) mean accuracies; levels: (B,) accuracy levels.
    """
    import numpy as np

    x = np.asarray(xs, dtype=float)
    below = means < levels[:, None]
    any_below = below.any(axis=1)
    first = below.argmax(axis=1)  # the first point below the level (0 when none is)
    low = np.empty(len(levels))
    high = np.empty(len(levels))
    bounded = ~any_below
    low[bounded], high[bounded] = 0.0, x[-1]
    missed = any_below & (first == 0)
    low[missed], high[missed] = x[0], math.inf
    rows = np.nonzero(any_below & (first > 0))[0]
    i = first[rows]
    y_hi, y_lo = means[rows, i - 1], means[rows, i]
    t = (y_hi - levels[rows]) / (y_hi - y_lo)
    lx = np.log(x)
    low[rows] = high[rows] = np.exp(lx[i - 1] + t * (lx[i] - lx[i - 1]))
    return low, high


def resample_means(samples: Sequence[Sequence[float]], replicates: int = REPLICATES, seed: int = BOOTSTRAP_SEED):
    """(len(samples), replicates): each sample's mean after resampling its values with replacement,
    every sample independently (the seeds of different configurations are different trainings)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((len(samples), replicates))
    for k, sample in enumerate(samples):
        values = np.asarray(sample, dtype=float)
        if values.size == 0:
            raise ValueError("resample_means: an empty sample has no mean")
        out[k] = values[rng.integers(0, values.size, size=(replicates, values.size))].mean(axis=1)
    return out


def ratio_bounds(num: tuple, den: tuple) -> tuple:
    """num / den for intervals [low, high] of positive budgets (floats or arrays): [num_low / den_high,
    num_high / den_low], with x / inf = 0 and x / 0 = inf."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.divide(num[0], den[1])
        high = np.divide(num[1], den[0])
    return low, high


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval of a ratio and how often its iso budgets had no number."""

    low: float
    high: float
    replicates: int
    undetermined: float  # fraction of replicates in which the ratio was only bounded


def percentile_interval(lows: np.ndarray, highs: np.ndarray, confidence: float = 0.95) -> Interval:
    """The 2.5% quantile of the replicates' lower ends and the 97.5% quantile of their upper ends.

    In a replicate where both iso budgets are reached, low == high (the ratio itself); where one is only
    bounded the replicate is the interval of values it allows, so the interval stays valid: it is as
    wide as the unknown part needs. Empirical quantiles (no interpolation towards an infinite end).
    """
    import numpy as np

    alpha = (1 - confidence) / 2
    low = float(np.quantile(lows, alpha, method="inverted_cdf"))
    high = float(np.quantile(highs, 1 - alpha, method="inverted_cdf"))
    return Interval(low, high, len(lows), float(np.mean(lows < highs)))
