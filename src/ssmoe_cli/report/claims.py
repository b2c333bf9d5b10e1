"""The paper's two blanks and its claims, computed from configurations (pure functions, no MLflow).

- Blank 1, compression vs the dense baseline: among the proposed model's configurations whose mean
  validation accuracy is within `tolerance` points of the dense baseline's, the one with the fewest
  mean nonzero parameters; the blank is 100 * (1 - nonzero_proposed / nonzero_dense) percent fewer.
- Blank 2, vs the compared model at matched sparsity: the same prune method and settings; test
  accuracy difference (proposed - compared, points) paired by seed with a paired t CI, and the
  nonzero-parameter ratio; at the same pairs, expert load balance and expert-output correlation
  (report/experts.py).
- Choices between configurations (blank 1's tolerance filter and tie-break, the headline pair) use
  validation accuracy only; test accuracy is reported next to them (report/selection.py). Runs
  without val/acc make the claim that needs the choice "not measurable", naming val/acc.
- A claim is "supported", "not supported" or "not measurable"; never a number the data lack.

Who is proposed, dense and compared is `Roles` (report/roles.py): the paper's models by default.
The docstrings of `compression_vs_dense`, `versus`, `_versus_claims` and `headline_claims` give the
exact rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ssmoe_cli.metrics import PARAMS_NONZERO, RATIO_VS_FCL, TEST_ACC
from ssmoe_cli.report.experts import MEASURES, compare
from ssmoe_cli.report.intervals import Paired, paired_differences
from ssmoe_cli.report.records import PARAM, Group, Key
from ssmoe_cli.report.roles import Roles, size_phrase
from ssmoe_cli.report.selection import SELECT_BY, WHY_VALIDATION, best, fmt_acc, selectable
from ssmoe_cli.report.verdicts import Claim, ci_text, paired_claim
from ssmoe_cli.report.verdicts import Status as Status  # re-exported: build.py and frontier*.py import it here

ACC, NONZERO, RATIO = TEST_ACC, PARAMS_NONZERO, RATIO_VS_FCL
# Keys that say which network was trained (they differ between the roles by definition).
NETWORK_TAGS = ("model", "gating", "topology")
_ROUTING_PARTS = {"gating", "gate", "topology"}


@dataclass
class CompressionBlank:
    """Blank 1: the proposed model vs the dense baseline at accuracy within the tolerance."""

    claim: Claim
    reference: Group | None = None
    chosen: Group | None = None
    percent: float | None = None  # percent fewer nonzero parameters than the reference
    ratio: float | None = None  # reference nonzero / chosen nonzero
    within_tolerance: list[Group] = field(default_factory=list)  # on validation accuracy


@dataclass
class Match:
    """The proposed and the compared model at matched pruning: one configuration pair."""

    proposed: Group
    other: Group
    setting: Key  # the matched keys (prune, sparsity, ...) and their values
    acc: Paired  # test accuracy, points, proposed - other
    nonzero_ratio: float | None  # mean nonzero other / proposed: > 1 means the proposed is smaller
    ratio_diff: float | None  # compression/ratio_vs_fcl: proposed - other
    accuracy_claim: Claim
    compression_claim: Claim
    load: Paired  # experts/load_cv2, proposed - other
    corr: Paired  # experts/output_corr, proposed - other
    balance_claim: Claim
    correlation_claim: Claim

    @property
    def setting_label(self) -> str:
        names = self.proposed.names
        return ", ".join(f"{names.get(k, k)}={'—' if v is None else v}" for k, v in self.setting)

    @property
    def claims(self) -> list[Claim]:
        """Accuracy, compression, load balance, correlation: in the order the report lists them."""
        return [self.accuracy_claim, self.compression_claim, self.balance_claim, self.correlation_claim]


@dataclass
class VersusBlank:
    """Blank 2: every matched pair and the headline one."""

    matches: list[Match]
    headline: Match | None
    reason: str = ""  # why there is no headline


@dataclass
class Findings:
    """Both blanks, the filled sentence and the claims, for one context (e.g. one data set)."""

    context: Key
    names: dict[str, str]
    compression: CompressionBlank
    versus: VersusBlank
    sentence: str
    claims: list[Claim]

    @property
    def context_label(self) -> str:
        return ", ".join(f"{self.names.get(k, k)}={v}" for k, v in self.context) or "all runs"


def points(tolerance: float) -> str:
    return f"{tolerance:g} point" + ("" if tolerance == 1 else "s")


def _missing(groups: Sequence[Group]) -> str:
    """Which of val/acc and params/nonzero no run of these groups has (and why val/acc matters)."""
    lacking = [m for m in (SELECT_BY, NONZERO) if not any(g.summary(m).n for g in groups)]
    if not lacking:
        return f"{SELECT_BY} and {NONZERO} together"
    return " and ".join(lacking) + (f" ({WHY_VALIDATION})" if SELECT_BY in lacking else "")


def compression_vs_dense(groups: Sequence[Group], tolerance: float, roles: Roles = Roles()) -> CompressionBlank:
    """Blank 1: percent fewer nonzero parameters of the proposed model than the dense baseline, at similar accuracy.

    Reference: a dense-role group; if several, the one whose compression/ratio_vs_fcl is closest to 1
    (the baseline network itself), then the most runs. Candidates: proposed-role groups with mean
    val/acc >= the reference's mean val/acc - tolerance/100. Chosen: the candidate with the fewest
    mean params/nonzero, then the higher mean val/acc. Blank: 100 * (1 - nz_chosen / nz_reference).
    Supported when a candidate exists and it has fewer nonzero parameters than the reference. The
    reason shows both groups' test accuracy beside the validation accuracy they were chosen on.
    """
    dense, proposed = roles.dense, roles.proposed
    name = f"compression vs dense {dense}"
    refs_all = [g for g in groups if dense.matches(g)]
    cands = [g for g in groups if proposed.matches(g)]
    refs = [g for g in refs_all if g.mean(NONZERO) is not None]
    # The reference is the baseline network whatever its accuracies: never re-chosen on accuracy.
    ref = min(refs, key=lambda g: (abs((g.mean(RATIO) or math.inf) - 1.0), -len(g.runs))) if refs else None
    measured = [g for g in selectable(cands) if g.mean(NONZERO) is not None]
    problems = []  # every reason at once, so one look says what to run or log
    if not refs_all:
        problems.append(f"no dense {dense} runs ({dense.describe()})")
    elif ref is None or ref.mean(SELECT_BY) is None:
        problems.append(f"the dense {dense} runs lack {_missing([ref] if ref else refs_all)}")
    if not cands:
        problems.append(f"no {proposed} runs ({proposed.describe()})")
    elif not measured:
        problems.append(f"the {proposed} runs lack {_missing(cands)}")
    if problems or ref is None:
        return CompressionBlank(Claim(name, "not measurable", "; ".join(problems)), reference=ref)
    ref_val, ref_nz = ref.mean(SELECT_BY), ref.mean(NONZERO)
    assert ref_val is not None and ref_nz is not None
    floor = ref_val - tolerance / 100 - 1e-12  # the epsilon keeps an exact-boundary mean inside
    within = [g for g in measured if (g.mean(SELECT_BY) or 0.0) >= floor]
    if not within:
        top = best(measured)
        assert top is not None
        why = (
            f"no {proposed} configuration within {points(tolerance)} of the dense {dense}'s validation accuracy "
            f"{fmt_acc(ref.summary(SELECT_BY))} (best: {top.label} at {fmt_acc(top.summary(SELECT_BY))} "
            f"validation, {fmt_acc(top.summary(ACC), ACC)} test)"
        )
        return CompressionBlank(Claim(name, "not supported", why), reference=ref)
    chosen = min(within, key=lambda g: (g.mean(NONZERO), -(g.mean(SELECT_BY) or 0.0)))
    nz = chosen.mean(NONZERO)
    assert nz is not None
    percent = 100.0 * (1.0 - nz / ref_nz)
    ratio = ref_nz / nz if nz > 0 else math.inf
    val, test = (f"{fmt_acc(chosen.summary(m), m)} vs {fmt_acc(ref.summary(m), m)}" for m in (SELECT_BY, ACC))
    detail = (
        f"{chosen.label}: {nz:,.0f} nonzero parameters vs {ref_nz:,.0f}; chosen on validation accuracy, within "
        f"{points(tolerance)} of the dense {dense}: {val}; test accuracy (reported, not used to choose): {test}"
    )
    single = [g.label for g in (ref, chosen) if g.summary(SELECT_BY).n < 2]
    if single:  # the rule compares means; say when one of them has no spread to judge it by
        detail += f"; single seed, no CI: {', '.join(single)}"
    if percent > 0 and round(ratio, 2) > 1.0:
        claim = Claim(name, "supported", f"{percent:.1f}% fewer nonzero parameters ({ratio:.2f}x); {detail}")
    else:
        claim = Claim(name, "not supported", f"no compression ({size_phrase(ratio)}): {detail}")
    return CompressionBlank(claim, ref, chosen, percent, ratio, within)


def match_keys(keys: Sequence[str]) -> list[str]:
    """Keys two networks must share to be compared at matched sparsity: all but the network identity.

    The model, gate and topology choices and the params under a gate or topology differ between the
    two roles by definition, so they are not matched.
    """
    return [
        k
        for k in keys
        if k not in NETWORK_TAGS and not (k.startswith(PARAM) and _ROUTING_PARTS & set(k[len(PARAM) :].split(".")))
    ]


def _matched(a: Group, b: Group, keys: Sequence[str]) -> Key | None:
    """The shared setting of two groups, or None when a key that both have differs.

    A key one side does not have (a param of one model only) does not prevent the match.
    """
    setting = []
    for k in keys:
        va, vb = a.value(k), b.value(k)
        if va is not None and vb is not None and va != vb:
            return None
        if va is not None or vb is not None:
            setting.append((k, va if va is not None else vb))
    return tuple(setting)


def _versus_claims(acc: Paired, nz_ratio: float | None, roles: Roles = Roles()) -> tuple[Claim, Claim]:
    """The two claims against the compared model for one matched pair.

    Accuracy improvement (test/acc, measured at a pair chosen without it): supported iff >= 2 paired
    seeds and the paired 95% CI's lower bound > 0 (verdicts.paired_claim); not measurable below 2.
    Compression improvement: supported iff the proposed model has fewer mean nonzero parameters (the
    ratio rounds above 1.00) and its accuracy is not significantly worse (>= 2 paired seeds and the
    CI's upper bound >= 0); not measurable below 2 paired seeds.
    """
    s, ci = acc.summary, ci_text(acc)
    basis = f"{ACC} of the pair, {roles.proposed} − {roles.versus} paired by seed"
    a = paired_claim(f"accuracy improvement vs {roles.versus}", acc, False, "worse", basis, "+.2f", " points")

    name = f"compression improvement vs {roles.versus}"
    if nz_ratio is None:
        c = Claim(name, "not measurable", f"{NONZERO} missing on one side")
    elif round(nz_ratio, 2) <= 1.0:
        c = Claim(name, "not supported", f"{roles.proposed} has {size_phrase(nz_ratio)} than {roles.versus}")
    else:
        fewer = size_phrase(nz_ratio)
        if s.ci_high is None:
            c = Claim(name, "not measurable", f"{fewer}, but the accuracy difference has no CI ({ci})")
        elif s.ci_high < 0:
            c = Claim(name, "not supported", f"{fewer} at significantly worse accuracy ({ci})")
        else:
            c = Claim(name, "supported", f"{fewer}, accuracy not significantly worse ({ci})")
    return a, c


def _headline(matches: Sequence[Match], prefer: Group | None) -> tuple[Match | None, str]:
    """The headline pair and, when there is none, why: see `versus`."""
    pool = [m for m in matches if m.proposed is prefer] or list(matches)
    if len(pool) == 1:
        return pool[0], ""  # nothing to choose between
    ranked = [m for m in pool if m.proposed.mean(SELECT_BY) is not None and m.other.mean(SELECT_BY) is not None]
    if not ranked:
        return None, f"{len(pool)} matched pairs and no {SELECT_BY} to choose the headline by ({WHY_VALIDATION})"
    # max keeps the first of equals: table order decides a full tie.
    return max(ranked, key=lambda m: (m.proposed.mean(SELECT_BY), m.other.mean(SELECT_BY), m.acc.n)), ""


def versus(
    groups: Sequence[Group], keys: Sequence[str], prefer: Group | None = None, roles: Roles = Roles()
) -> VersusBlank:
    """Blank 2 and the expert claims: the proposed model vs the compared one at matched sparsity.

    Match: a proposed-role group and a versus-role group that agree on `match_keys(keys)` (prune
    method, target sparsity or density when they vary, experts, k, training settings, ...). For each
    match, accuracy difference = mean over the common seeds (params.seed) of 100 * (test/acc
    proposed - test/acc other) with a paired t CI (n = common seeds; none below 2); nonzero ratio =
    mean nonzero other / proposed; ratio_diff = mean compression/ratio_vs_fcl proposed - other;
    experts/load_cv2 and experts/output_corr differences paired the same way (report/experts.py).
    Headline, chosen on validation accuracy only: among the matches of `prefer` (blank 1's choice,
    itself chosen on validation) if it has any, else among all, the only one, else the one whose
    proposed configuration has the highest mean val/acc, then the compared one's, then the most
    paired seeds. Matches without val/acc on both sides are not candidates; with none left there
    is no headline, and `reason` says so. Claims: `_versus_claims`, experts.compare.
    """
    mkeys = match_keys(keys)
    mine = [g for g in groups if roles.proposed.matches(g)]
    theirs = [g for g in groups if roles.versus.matches(g)]
    if not mine or not theirs:
        missing = " and ".join(str(r) for r, gs in ((roles.proposed, mine), (roles.versus, theirs)) if not gs)
        return VersusBlank([], None, f"no {missing} runs")
    matches = []
    for p in mine:
        for s in theirs:
            setting = _matched(p, s, mkeys)
            if setting is None:
                continue
            acc = paired_differences(p.by_seed(ACC), s.by_seed(ACC), scale=100.0)
            nz_p, nz_s = p.mean(NONZERO), s.mean(NONZERO)
            nz_ratio = nz_s / nz_p if nz_p and nz_s is not None else None
            r_p, r_s = p.mean(RATIO), s.mean(RATIO)
            ratio_diff = r_p - r_s if r_p is not None and r_s is not None else None
            (load, balance), (corr, correlation) = (compare(measure, p, s, roles) for measure in MEASURES)
            claims = _versus_claims(acc, nz_ratio, roles)
            matches.append(Match(p, s, setting, acc, nz_ratio, ratio_diff, *claims, load, corr, balance, correlation))
    if not matches:
        return VersusBlank([], None, f"no {roles.proposed} and {roles.versus} configurations share a prune setting")
    headline, reason = _headline(matches, prefer)
    return VersusBlank(matches, headline, reason)


def headline_claims(blank: VersusBlank, roles: Roles = Roles()) -> list[Claim]:
    """The claims against the compared model for the abstract: the headline pair's, each named with
    its setting (`accuracy improvement vs sgmoe [prune=obd]`), or all four not measurable with the
    reason there is no headline."""
    names = [f"{c} vs {roles.versus}" for c in ("accuracy improvement", "compression improvement")]
    names += [f"{measure.claim} vs {roles.versus}" for measure in MEASURES]
    if blank.headline is None:
        return [Claim(name, "not measurable", blank.reason) for name in names]
    where = f" [{blank.headline.setting_label}]"
    return [Claim(c.claim + where, c.status, c.reason) for c in blank.headline.claims]
