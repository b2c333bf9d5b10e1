"""Mean, sample std and 95% confidence intervals over seeds (pure Python; scipy only when installed).

The interval of a mean is Student's t interval, mean ± t(0.975, n-1) * std / sqrt(n), intersected
with the values the metric can take (ssmoe_cli.metrics: [0, 1] for a fraction such as accuracy,
[0, inf) for counts and times): a t interval of 99.0, 99.5, 99.9% reaches 100.6%, an accuracy no
model can have, and one of two epoch times 1.2 s and 3.4 s starts at -12 s.

Why the intersection and not a logit-scale interval: the true mean accuracy lies in [0, 1], so
removing the impossible part never removes it, and the interval keeps exactly the coverage of the t
interval (P(mu in C and [0, 1]) = P(mu in C)); it remains an interval for the mean the table shows.
A t interval of logits, mapped back, is an interval for another centre (the logistic of the mean
logit), and a seed at exactly 100% (a small test set such as digits) has an infinite logit that
only an arbitrary clamp can tame: with 100, 100, 99% its lower end falls to 63% under a 5e-5
clamp. Near 0 or 100% the t interval's normal assumption is strained either way; with 2-3 seeds
no interval is more than a rough guide, and the tables say how many seeds each cell has.

With fewer than two values there is no std and no interval: never a fake one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """n values: mean, sample standard deviation (ddof=1) and a 95% confidence interval."""

    n: int
    mean: float | None = None
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def half_width(self) -> float | None:
        """Half the interval's width (half its span where the metric's bounds cut it)."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2


Bounds = tuple[float | None, float | None]


def summarize(values: Iterable[float | None], confidence: float = CONFIDENCE, bounds: Bounds = (None, None)) -> Summary:
    """n, mean, sample std and CI, the CI cut to `bounds` (low, high; None: unbounded).

    NaN, infinities and None are missing values, not samples.
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Summary(0)
    mean = math.fsum(xs) / n
    if n < 2:
        return Summary(1, mean)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds[0] is not None:
        low = max(low, bounds[0])
    if bounds[1] is not None:
        high = min(high, bounds[1])
    return Summary(n, mean, std, low, high)


# --------------------------------------------------------------------------- Student t quantile


def t_quantile(p: float, df: float) -> float:
    """The p quantile of Student's t with df degrees of freedom (scipy when installed)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    try:
        from scipy.stats import t as student_t
    except ImportError:
        return t_quantile_fallback(p, df)
    return float(student_t.ppf(p, df))


def t_quantile_fallback(p: float, df: float) -> float:
    """t quantile by bisection on the exact CDF (regularized incomplete beta), for when scipy is absent."""
    if p < 0.5:
        return -t_quantile_fallback(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def _t_cdf(t: float, df: float) -> float:
    """P(T <= t) for t >= 0: 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2)."""
    return 1.0 - 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, modified Lentz; Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only on this side: use the symmetry
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


# --------------------------------------------------------------------------- paired differences


@dataclass(frozen=True)
class Paired:
    """Mean of per-seed differences a - b over the seeds both have, with a paired t CI (n >= 2)."""

    seeds: tuple[str, ...]
    diffs: tuple[float, ...]
    summary: Summary

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_differences(a: dict[str, float], b: dict[str, float], scale: float = 1.0) -> Paired:
    """Pair two {seed: value} maps on their common seeds; differences (a - b) * scale, t interval.

    Differences of accuracies lie in [-1, 1], of expert-output correlations in [-2, 2], of load CV²
    anywhere, but all are centred near 0, far from any bound: the plain t interval is the right one.
    """
    seeds = tuple(sorted(set(a) & set(b), key=_seed_order))
    diffs = tuple((a[s] - b[s]) * scale for s in seeds)
    return Paired(seeds, diffs, summarize(diffs))


def _seed_order(seed: str) -> tuple[int, float, str]:
    try:
        return (0, float(seed), "")
    except ValueError:
        return (1, 0.0, seed)
