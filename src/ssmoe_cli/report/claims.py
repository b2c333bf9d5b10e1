"""The paper's two blanks and its claims, computed from configurations (pure functions, no MLflow).

- Blank 1, compression vs the dense baseline: among the proposed model's configurations whose mean
  test accuracy is within `tolerance` points of the dense baseline's, the one with the fewest mean
  nonzero parameters; the blank is 100 * (1 - nonzero_proposed / nonzero_dense) percent fewer.
- Blank 2, vs the compared model at matched sparsity: the same prune method and settings; accuracy
  difference (proposed - compared, points) paired by seed with a paired t CI, and the
  nonzero-parameter ratio.
- A claim is "supported", "not supported" or "not measurable"; never a number the data lack.

Who is proposed, dense and compared is `Roles` (report/roles.py): the paper's models by default.
The docstrings of `compression_vs_dense`, `versus` and `_versus_claims` give the exact rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ssmoe_cli.metrics import PARAMS_NONZERO, RATIO_VS_FCL, TEST_ACC
from ssmoe_cli.report.intervals import Paired, Summary, paired_differences
from ssmoe_cli.report.records import PARAM, Group, Key
from ssmoe_cli.report.roles import Roles, size_phrase

Status = Literal["supported", "not supported", "not measurable"]
ACC, NONZERO, RATIO = TEST_ACC, PARAMS_NONZERO, RATIO_VS_FCL
# Keys that say which network was trained (they differ between the roles by definition).
NETWORK_TAGS = ("model", "gating", "topology")
_ROUTING_PARTS = {"gating", "gate", "topology"}


@dataclass(frozen=True)
class Claim:
    """One claim of the abstract and what the data say about it."""

    claim: str
    status: Status
    reason: str


@dataclass
class CompressionBlank:
    """Blank 1: the proposed model vs the dense baseline at accuracy within the tolerance."""

    claim: Claim
    reference: Group | None = None
    chosen: Group | None = None
    percent: float | None = None  # percent fewer nonzero parameters than the reference
    ratio: float | None = None  # reference nonzero / chosen nonzero
    within_tolerance: list[Group] = field(default_factory=list)


@dataclass
class Match:
    """The proposed and the compared model at matched pruning: one configuration pair."""

    proposed: Group
    other: Group
    setting: Key  # the matched keys (prune, sparsity, ...) and their values
    acc: Paired  # points, proposed - other
    nonzero_ratio: float | None  # mean nonzero other / proposed: > 1 means the proposed is smaller
    ratio_diff: float | None  # compression/ratio_vs_fcl: proposed - other
    accuracy_claim: Claim
    compression_claim: Claim

    @property
    def setting_label(self) -> str:
        names = self.proposed.names
        return ", ".join(f"{names.get(k, k)}={'—' if v is None else v}" for k, v in self.setting)


@dataclass
class VersusBlank:
    """Blank 2: every matched pair and the headline one."""

    matches: list[Match]
    headline: Match | None
    reason: str = ""  # why there is no match


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


def _fmt_acc(summary: Summary) -> str:
    if summary.mean is None:
        return f"no {ACC}"
    spread = f" ± {100 * summary.std:.2f}" if summary.std is not None else " (1 seed)"
    return f"{100 * summary.mean:.2f}%{spread}"


def _missing(groups: Sequence[Group]) -> str:
    """Which of test/acc and params/nonzero no run of these groups has."""
    return (
        " and ".join(m for m in (ACC, NONZERO) if not any(g.summary(m).n for g in groups))
        or f"{ACC} and {NONZERO} together"
    )


def compression_vs_dense(groups: Sequence[Group], tolerance: float, roles: Roles = Roles()) -> CompressionBlank:
    """Blank 1: percent fewer nonzero parameters of the proposed model than the dense baseline, at similar accuracy.

    Reference: a dense-role group; if several, the one whose compression/ratio_vs_fcl is closest to 1
    (the baseline network itself), then the most runs. Candidates: proposed-role groups with mean
    test/acc >= reference mean - tolerance/100. Chosen: the candidate with the fewest mean
    params/nonzero. Blank: 100 * (1 - nz_chosen / nz_reference). Supported when a candidate exists
    and it has fewer nonzero parameters than the reference.
    """
    dense, proposed = roles.dense, roles.proposed
    name = f"compression vs dense {dense}"
    refs_all = [g for g in groups if dense.matches(g)]
    cands = [g for g in groups if proposed.matches(g)]
    refs = [g for g in refs_all if g.mean(ACC) is not None and g.mean(NONZERO) is not None]
    measured = [g for g in cands if g.mean(ACC) is not None and g.mean(NONZERO) is not None]
    problems = []  # every reason at once, so one look says what to run or log
    if not refs_all:
        problems.append(f"no dense {dense} runs ({dense.describe()})")
    elif not refs:
        problems.append(f"the dense {dense} runs lack {_missing(refs_all)}")
    if not cands:
        problems.append(f"no {proposed} runs ({proposed.describe()})")
    elif not measured:
        problems.append(f"the {proposed} runs lack {_missing(cands)}")
    ref = min(refs, key=lambda g: (abs((g.mean(RATIO) or math.inf) - 1.0), -len(g.runs))) if refs else None
    if problems or ref is None:
        return CompressionBlank(Claim(name, "not measurable", "; ".join(problems)), reference=ref)
    ref_acc, ref_nz = ref.mean(ACC), ref.mean(NONZERO)
    assert ref_acc is not None and ref_nz is not None
    floor = ref_acc - tolerance / 100 - 1e-12  # the epsilon keeps an exact-boundary mean inside
    within = [g for g in measured if (g.mean(ACC) or 0.0) >= floor]
    ref_text = f"dense {dense} {_fmt_acc(ref.summary(ACC))}"
    if not within:
        best = max(measured, key=lambda g: g.mean(ACC) or 0.0)
        why = (
            f"no {proposed} configuration within {points(tolerance)} of the {ref_text} "
            f"(best: {best.label} at {_fmt_acc(best.summary(ACC))})"
        )
        return CompressionBlank(Claim(name, "not supported", why), reference=ref)
    chosen = min(within, key=lambda g: (g.mean(NONZERO), -(g.mean(ACC) or 0.0)))
    nz = chosen.mean(NONZERO)
    assert nz is not None
    percent = 100.0 * (1.0 - nz / ref_nz)
    ratio = ref_nz / nz if nz > 0 else math.inf
    detail = (
        f"{chosen.label}: {nz:,.0f} nonzero parameters vs {ref_nz:,.0f}, "
        f"accuracy {_fmt_acc(chosen.summary(ACC))} vs {ref_text} (tolerance {points(tolerance)})"
    )
    single = [g.label for g in (ref, chosen) if g.summary(ACC).n < 2]
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


def ci_text(p: Paired) -> str:
    s = p.summary
    if s.ci_low is None or s.ci_high is None:
        return "single seed: no CI" if p.n == 1 else "no paired seeds"
    return f"95% CI {s.ci_low:+.2f}..{s.ci_high:+.2f}, {p.n} seeds"


def _versus_claims(acc: Paired, nz_ratio: float | None, roles: Roles = Roles()) -> tuple[Claim, Claim]:
    """The two claims against the compared model for one matched pair.

    Accuracy improvement: supported iff >= 2 paired seeds and the paired 95% CI's lower bound > 0;
    not measurable below 2 paired seeds. Compression improvement: supported iff the proposed model
    has fewer mean nonzero parameters (the ratio rounds above 1.00) and its accuracy is not
    significantly worse (>= 2 paired seeds and the CI's upper bound >= 0); not measurable below 2
    paired seeds.
    """
    s, ci = acc.summary, ci_text(acc)
    name = f"accuracy improvement vs {roles.versus}"
    if acc.n == 0 or s.mean is None:
        a = Claim(name, "not measurable", f"no seed has {ACC} in both")
    elif s.ci_low is None or s.ci_high is None:
        a = Claim(name, "not measurable", f"single seed: no CI (difference {s.mean:+.2f} points)")
    elif s.ci_low > 0:
        a = Claim(name, "supported", f"{s.mean:+.2f} points ({ci}), CI above 0")
    elif s.ci_high < 0:
        a = Claim(name, "not supported", f"significantly worse: {s.mean:+.2f} points ({ci})")
    else:
        a = Claim(name, "not supported", f"CI includes 0: {s.mean:+.2f} points ({ci})")

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


def versus(
    groups: Sequence[Group], keys: Sequence[str], prefer: Group | None = None, roles: Roles = Roles()
) -> VersusBlank:
    """Blank 2: the proposed model vs the compared one at matched sparsity.

    Match: a proposed-role group and a versus-role group that agree on `match_keys(keys)` (prune
    method, target sparsity or density when they vary, experts, k, training settings, ...). For each
    match, accuracy difference = mean over the common seeds (params.seed) of 100 * (acc_proposed -
    acc_other) with a paired t CI (n = common seeds; none below 2); nonzero ratio = mean nonzero
    other / proposed; ratio_diff = mean compression/ratio_vs_fcl proposed - other. Headline: the
    match of `prefer` (blank 1's choice) if it has one, else the one with the most paired seeds.
    Claims: see `_versus_claims`.
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
            matches.append(Match(p, s, setting, acc, nz_ratio, ratio_diff, *_versus_claims(acc, nz_ratio, roles)))
    if not matches:
        return VersusBlank([], None, f"no {roles.proposed} and {roles.versus} configurations share a prune setting")
    headline = next((m for m in matches if m.proposed is prefer), None)
    if headline is None:
        headline = max(matches, key=lambda m: m.acc.n)  # max keeps the first of equals: table order
    return VersusBlank(matches, headline)
