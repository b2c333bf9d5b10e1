"""Load balance and expert-output correlation of the proposed model against the compared one.

Two claims per matched pair (report/claims.versus: same prune method and settings), each on a
routing metric that `ssmoe train` logs for every mixture (models/diagnostics.py), lower is better:

- "more balanced expert load": experts/load_cv2, the CV² (variance / mean²) of each expert's share
  of the test set's (sample, expert) assignments; 0 is a perfectly even load;
- "less correlated expert outputs": experts/output_corr, the mean pairwise Pearson correlation of
  the experts' outputs on the same test inputs.

The difference proposed - compared is paired by seed (intervals.paired_differences: the seeds both
configurations ran) with a paired t 95% interval; the verdict is report/verdicts.paired_claim with
the claimed side below 0. Which matched pair is the headline is chosen on validation accuracy
(report/selection.py), like every other choice of the report.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssmoe_cli.metrics import LOAD_CV2, OUTPUT_CORR
from ssmoe_cli.report.intervals import Paired, paired_differences
from ssmoe_cli.report.records import Group
from ssmoe_cli.report.roles import Roles
from ssmoe_cli.report.verdicts import Claim, paired_claim


@dataclass(frozen=True)
class ExpertMeasure:
    """A routing metric on which the proposed model claims to be lower than the compared one."""

    metric: str
    claim: str  # the claim's name, before "vs <compared model>"
    meaning: str  # what the metric is, in words
    worse: str  # a significant difference the other way, in words


LOAD = ExpertMeasure(
    LOAD_CV2,
    "more balanced expert load",
    "CV² of the experts' shares of test assignments, 0 = even",
    "less balanced",
)
CORR = ExpertMeasure(
    OUTPUT_CORR,
    "less correlated expert outputs",
    "mean pairwise Pearson correlation of the experts' outputs on the same test inputs",
    "more correlated",
)
MEASURES = (LOAD, CORR)


def compare(measure: ExpertMeasure, proposed: Group, other: Group, roles: Roles = Roles()) -> tuple[Paired, Claim]:
    """measure.metric of `proposed` minus that of `other` per seed both have it, and the claim that the
    proposed model's is lower."""
    diff = paired_differences(proposed.by_seed(measure.metric), other.by_seed(measure.metric))
    name = f"{measure.claim} vs {roles.versus}"
    basis = f"{measure.metric} ({measure.meaning}), {roles.proposed} − {roles.versus} paired by seed"
    if diff.n == 0:
        sides = ((roles.proposed, proposed), (roles.versus, other))
        lacking = [str(role) for role, g in sides if not g.values(measure.metric)]
        why = f"the {' and '.join(lacking)} runs lack {measure.metric}" if lacking else "no seed ran in both"
        return diff, Claim(name, "not measurable", f"{why}; {basis}")
    return diff, paired_claim(name, diff, lower=True, worse=measure.worse, basis=basis)
