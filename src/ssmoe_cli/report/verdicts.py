"""A claim, its verdict and the verdict of a difference paired by seed (pure functions).

A claim reads "supported", "not supported" or "not measurable", with the reason in words; never a
number the data lack. A claimed direction of a paired difference (proposed - compared, one value
per seed both ran) is supported only when at least 2 seeds pair and the whole 95% interval lies on
the claimed side of 0; an interval that includes 0 or lies on the other side is not supported; no
paired seed, or a single one (no interval), is not measurable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ssmoe_cli.report.intervals import Paired

Status = Literal["supported", "not supported", "not measurable"]


@dataclass(frozen=True)
class Claim:
    """One claim of the abstract and what the data say about it."""

    claim: str
    status: Status
    reason: str


def ci_text(p: Paired, fmt: str = "+.2f") -> str:
    """`95% CI -0.96..+0.40, 3 seeds`, or why there is none."""
    s = p.summary
    if s.ci_low is None or s.ci_high is None:
        return "single seed: no CI" if p.n == 1 else "no paired seeds"
    return f"95% CI {s.ci_low:{fmt}}..{s.ci_high:{fmt}}, {p.n} seeds"


def paired_claim(
    name: str, diff: Paired, lower: bool, worse: str, basis: str, fmt: str = "+.3f", unit: str = ""
) -> Claim:
    """The verdict on `diff` (proposed - compared) for the claim that it is below 0 (`lower`) or above.

    `worse`: the words for a significant difference the other way ("less balanced"); `basis`: what
    was compared, in words, appended to every reason so that each verdict names it; `unit`: after
    each difference (" points").
    """
    s = diff.summary
    if diff.n == 0 or s.mean is None:
        return Claim(name, "not measurable", f"no paired seeds; {basis}")
    value = f"{s.mean:{fmt}}{unit} ({ci_text(diff, fmt)})"
    if s.ci_low is None or s.ci_high is None:
        return Claim(name, "not measurable", f"single seed: no CI (difference {s.mean:{fmt}}{unit}); {basis}")
    claimed, against = (s.ci_high < 0, s.ci_low > 0) if lower else (s.ci_low > 0, s.ci_high < 0)
    side = "below" if lower else "above"
    if claimed:
        return Claim(name, "supported", f"{value}, CI {side} 0; {basis}")
    if against:
        return Claim(name, "not supported", f"significantly {worse}: {value}; {basis}")
    return Claim(name, "not supported", f"CI includes 0: {value}; {basis}")
