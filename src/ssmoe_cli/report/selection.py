"""Choosing between configurations: on validation accuracy only; test accuracy is only reported.

Every choice the report makes between configurations compares the mean over seeds of `val/acc`
(each run's last-epoch validation accuracy, which `ssmoe train` logs in every run):
- blank 1: which of the proposed model's configurations are within the tolerance of the dense
  reference, the tie-break among the smallest of them, and the best one named when none is within;
- blank 2 and the expert claims: which matched pair is the headline.

Test accuracy is shown next to each choice and is what the accuracy claims measure once the choice
is made, but it never makes one: picking the configuration with the best test accuracy and then
reporting that accuracy reports the largest of several noisy estimates, an optimistic number (the
test set would have become a validation set).

A configuration without `val/acc` (runs from before it was logged) cannot take part in a choice:
the claim that needs the choice is "not measurable" and names the missing metric. There is no
fallback to `test/acc`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ssmoe_cli.metrics import TEST_ACC, VAL_ACC
from ssmoe_cli.report.intervals import Summary
from ssmoe_cli.report.records import Group

SELECT_BY = VAL_ACC  # the metric every choice compares
REPORTED = TEST_ACC  # shown next to each choice, never compared to make one
WHY_VALIDATION = f"configurations are chosen on {SELECT_BY} only, never on {REPORTED}"


def selectable(groups: Sequence[Group]) -> list[Group]:
    """The groups that can take part in a choice: at least one run logged the selection metric."""
    return [g for g in groups if g.mean(SELECT_BY) is not None]


def best(groups: Sequence[Group]) -> Group | None:
    """The group with the highest mean validation accuracy; ties: more runs, then table order."""
    pool = selectable(groups)
    if not pool:
        return None
    # max keeps the first of equals: the table's order decides a full tie.
    return max(pool, key=lambda g: (g.mean(SELECT_BY) or 0.0, len(g.runs)))


def fmt_acc(summary: Summary, metric: str = SELECT_BY) -> str:
    """`88.19% ± 0.14` (points of std over seeds), `88.19% (1 seed)`, or `no val/acc`."""
    if summary.mean is None:
        return f"no {metric}"
    spread = f" ± {100 * summary.std:.2f}" if summary.std is not None else " (1 seed)"
    return f"{100 * summary.mean:.2f}%{spread}"
