"""Statistics of `ssmoe report`, as pure functions over plain run records (no MLflow here).

Grouping runs into configurations, mean / sample std / Student-t 95% confidence intervals over
seeds, differences paired by seed, and the paper's two blanks with the abstract's sentence.

Definitions (the docstrings of `compression_vs_fcl` and `versus_sgmoe` give the details):

- Blank 1, compression vs the dense FCL: among the paper's model's configurations whose mean test
  accuracy is within `tolerance` points of the dense FCL's, the one with the fewest mean nonzero
  parameters; the blank is 100 * (1 - nonzero_ptsne / nonzero_fcl) percent fewer nonzero parameters.
- Blank 2, vs SGMoE at matched sparsity: the same prune method and settings; accuracy difference
  (ptsne - sgmoe, points) paired by seed with a paired t CI, and the nonzero-parameter ratio.
- A claim is "supported", "not supported" or "not measurable"; never a number the data lack.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

CONFIDENCE = 0.95
ACC = "test/acc"
NONZERO = "params/nonzero"
RATIO = "compression/ratio_vs_fcl"


@dataclass(frozen=True)
class MetricSpec:
    """A metric of the report: its MLflow name, a short column label and how to show one value."""

    name: str
    label: str
    kind: Literal["pct", "count", "ratio", "float"]


# The table's metrics, in order (docs/configuration.md has their meaning).
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(ACC, "test acc %", "pct"),
    MetricSpec(NONZERO, "nonzero params", "count"),
    MetricSpec("params/active_per_sample", "active params/sample", "count"),
    MetricSpec(RATIO, "compression vs FCL", "ratio"),
    MetricSpec("compression/bytes_ratio_vs_fcl", "file compression vs FCL", "ratio"),
    MetricSpec("time/epoch_s", "epoch s", "float"),
    MetricSpec("time/infer_ms_b256", "infer ms b256", "float"),
    MetricSpec("experts/load_cv2", "expert load CV²", "float"),
    MetricSpec("experts/output_corr", "expert output corr", "float"),
)
# Plotted with load_cv2 but not a table column.
LOAD_METRICS = ("experts/load_cv2", "experts/load_max_over_mean")

BASE_KEYS = ("model", "prune")
# Added to the grouping when they take more than one value among the selected runs.
AUTO_KEYS = (
    "gating",
    "topology",
    "data",
    "params.prune.target_sparsity",
    "params.prune.density",
    "params.model.num_experts",
    "params.model.k",
    "params.gating.perplexity",
)
# Keys that say which network was trained; the others (data, user keys such as
# params.trainer.max_epochs) are the context within which networks are compared.
IDENTITY_KEYS = ("model", "gating", "topology")
_NETWORK_PREFIXES = ("params.model.", "params.prune.", "params.gating.", "params.topology.")

MODEL_ORDER = ("fcl", "moe", "sgmoe", "ptsne_moe")
PRUNE_ORDER = ("none", "stochasticnet", "magnitude", "obd")

Status = Literal["supported", "not supported", "not measurable"]


# --------------------------------------------------------------------------- runs and groups


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run, reduced to what the report reads."""

    run_id: str
    experiment: str = ""
    status: str = "FINISHED"
    start_time: int = 0  # ms since the epoch; the later of two runs with one seed wins
    name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        """A grouping key's value: `params.x`, `tags.x`, or a bare tag name such as `model`."""
        if key.startswith("params."):
            return self.params.get(key[len("params.") :])
        if key.startswith("tags."):
            return self.tags.get(key[len("tags.") :])
        return self.tags.get(key)

    @property
    def seed(self) -> str | None:
        return self.params.get("seed", self.tags.get("seed"))

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if value is None or not math.isfinite(value):
            return None
        return float(value)


def short_key(key: str) -> str:
    """Column name of a grouping key: its last dotted part (params.prune.target_sparsity -> target_sparsity)."""
    return key.rsplit(".", 1)[-1]


def _sort_value(value: str | None, order: Sequence[str] = ()) -> tuple:
    if value is None:
        return (3, 0.0, "")
    if value in order:
        return (0, float(order.index(value)), "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and 95% t confidence interval of n values."""

    n: int
    mean: float | None = None
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2


def summarize(values: Iterable[float], confidence: float = CONFIDENCE) -> Summary:
    """n, mean, sample std and t CI; std and CI are None below two values (never a fake CI)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Summary(0)
    mean = math.fsum(xs) / n
    if n < 2:
        return Summary(1, mean)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass
class Group:
    """The runs of one configuration (one value per grouping key), at most one per seed."""

    key: tuple[tuple[str, str | None], ...]
    runs: list[RunRecord]
    duplicates: int = 0  # runs dropped because a later run had the same seed
    _summaries: dict[str, Summary] = field(default_factory=dict, repr=False)

    def value(self, key: str) -> str | None:
        """The group's value of a key: its grouping value, else the one value its runs share (or None)."""
        for k, v in self.key:
            if k == key:
                return v
        values = {run.get(key) for run in self.runs}
        return values.pop() if len(values) == 1 else None

    @property
    def model(self) -> str | None:
        return self.value("model")

    @property
    def prune(self) -> str | None:
        return self.value("prune")

    @property
    def label(self) -> str:
        """Short human label: `ptsne_moe / magnitude / target_sparsity=0.9`."""
        parts = [str(self.model), str(self.prune)]
        parts += [f"{short_key(k)}={v}" for k, v in self.key if k not in BASE_KEYS and v is not None]
        return " / ".join(parts)

    @property
    def slug(self) -> str:
        """The label as a file-name part."""
        text = self.label.replace(" / ", "_").replace("=", "-")
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)

    @property
    def seeds(self) -> list[str]:
        return sorted({s for run in self.runs if (s := run.seed) is not None}, key=_sort_value)

    def values(self, metric: str) -> list[float]:
        return [v for run in self.runs if (v := run.metric(metric)) is not None]

    def by_seed(self, metric: str) -> dict[str, float]:
        return {run.seed: v for run in self.runs if run.seed is not None and (v := run.metric(metric)) is not None}

    def summary(self, metric: str) -> Summary:
        if metric not in self._summaries:
            self._summaries[metric] = summarize(self.values(metric))
        return self._summaries[metric]

    def mean(self, metric: str) -> float | None:
        return self.summary(metric).mean


def varying_keys(runs: Sequence[RunRecord], candidates: Iterable[str] = AUTO_KEYS) -> list[str]:
    """The candidate keys that take more than one (non-missing) value among the runs.

    gating and topology count only when they vary among one model's runs (an ablation such as
    model=ptsne_moe gating=noisy_topk): across models they only repeat the model's name.
    """
    found = []
    for key in candidates:
        if key in IDENTITY_KEYS:
            by_model: dict[str | None, set[str]] = {}
            for run in runs:
                if (v := run.get(key)) is not None:
                    by_model.setdefault(run.get("model"), set()).add(v)
            varies = any(len(vs) > 1 for vs in by_model.values())
        else:
            varies = len({v for run in runs if (v := run.get(key)) is not None}) > 1
        if varies:
            found.append(key)
    return found


def choose_group_keys(runs: Sequence[RunRecord], extra: Iterable[str] = ()) -> list[str]:
    """model, prune, every AUTO_KEYS key that varies, then the user's extra keys (no duplicates)."""
    keys: list[str] = []
    for key in (*BASE_KEYS, *varying_keys(runs), *extra):
        if key not in keys:
            keys.append(key)
    return keys


def group_runs(runs: Sequence[RunRecord], keys: Sequence[str]) -> list[Group]:
    """Group runs by their values of `keys`; within a group, a seed run twice counts once (latest run).

    A re-run with the same seed is not an independent sample: counting it twice would narrow the CI.
    """
    buckets: dict[tuple[tuple[str, str | None], ...], list[RunRecord]] = {}
    for run in runs:
        buckets.setdefault(tuple((k, run.get(k)) for k in keys), []).append(run)
    groups = []
    for key, members in buckets.items():
        latest: dict[str, RunRecord] = {}
        unseeded = []
        for run in sorted(members, key=lambda r: r.start_time):
            if run.seed is None:
                unseeded.append(run)
            else:
                latest[run.seed] = run
        kept = sorted([*latest.values(), *unseeded], key=lambda r: (_sort_value(r.seed), r.start_time))
        groups.append(Group(key, kept, duplicates=len(members) - len(kept)))

    def order(g: Group) -> tuple:
        return tuple(
            _sort_value(v, MODEL_ORDER if k == "model" else PRUNE_ORDER if k == "prune" else ()) for k, v in g.key
        )

    return sorted(groups, key=order)


# --------------------------------------------------------------------------- Student t quantile


def t_quantile(p: float, df: float) -> float:
    """The p quantile of Student's t with df degrees of freedom (scipy when installed)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    try:
        from scipy.stats import t as student_t
    except ImportError:
        return _t_quantile_fallback(p, df)
    return float(student_t.ppf(p, df))


def _t_quantile_fallback(p: float, df: float) -> float:
    """t quantile by bisection on the exact CDF (regularized incomplete beta), for when scipy is absent."""
    if p < 0.5:
        return -_t_quantile_fallback(1.0 - p, df)
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


def paired_differences(a: Mapping[str, float], b: Mapping[str, float], scale: float = 1.0) -> Paired:
    """Pair two {seed: value} maps on their common seeds; differences (a - b) * scale."""
    seeds = tuple(sorted(set(a) & set(b), key=_sort_value))
    diffs = tuple((a[s] - b[s]) * scale for s in seeds)
    return Paired(seeds, diffs, summarize(diffs))


# --------------------------------------------------------------------------- the paper's blanks


@dataclass(frozen=True)
class Claim:
    """One claim of the abstract and what the data say about it."""

    claim: str
    status: Status
    reason: str


@dataclass
class CompressionBlank:
    """Blank 1: the paper's model vs the dense FCL at accuracy within the tolerance."""

    claim: Claim
    reference: Group | None = None
    chosen: Group | None = None
    percent: float | None = None  # percent fewer nonzero parameters than the reference
    ratio: float | None = None  # reference nonzero / chosen nonzero
    within_tolerance: list[Group] = field(default_factory=list)


@dataclass
class SgmoeMatch:
    """The paper's model and SGMoE at matched pruning: one configuration pair."""

    ptsne: Group
    sgmoe: Group
    setting: tuple[tuple[str, str | None], ...]  # the matched keys (prune, sparsity, ...)
    acc: Paired  # points, ptsne - sgmoe
    nonzero_ratio: float | None  # mean nonzero sgmoe / ptsne: > 1 means ptsne is smaller
    ratio_diff: float | None  # compression/ratio_vs_fcl: ptsne - sgmoe
    accuracy_claim: Claim
    compression_claim: Claim

    @property
    def setting_label(self) -> str:
        return ", ".join(f"{short_key(k)}={'—' if v is None else v}" for k, v in self.setting)


@dataclass
class SgmoeBlank:
    """Blank 2: every matched pair and the headline one."""

    matches: list[SgmoeMatch]
    headline: SgmoeMatch | None
    reason: str = ""  # why there is no match


@dataclass
class Findings:
    """Both blanks, the filled sentence and the claims, for one context (e.g. one data set)."""

    context: tuple[tuple[str, str | None], ...]
    compression: CompressionBlank
    sgmoe: SgmoeBlank
    sentence: str
    claims: list[Claim]

    @property
    def context_label(self) -> str:
        return ", ".join(f"{short_key(k)}={v}" for k, v in self.context) or "all runs"


def _values_of(group: Group, key: str) -> set[str | None]:
    return {run.get(key) for run in group.runs}


def is_paper_model(group: Group) -> bool:
    """The paper's network: model ptsne_moe with its t-SNE gate (a gating=... ablation is not)."""
    return group.model == "ptsne_moe" and _values_of(group, "gating") <= {None, "ptsne"}


def is_sgmoe(group: Group) -> bool:
    """Shazeer et al.'s SGMoE: model sgmoe with its noisy top-k gate and isolated experts."""
    return (
        group.model == "sgmoe"
        and _values_of(group, "gating") <= {None, "noisy_topk"}
        and _values_of(group, "topology") <= {None, "isolated"}
    )


def is_dense_fcl(group: Group) -> bool:
    return group.model == "fcl" and group.prune == "none"


def points(tolerance: float) -> str:
    return f"{tolerance:g} point" + ("" if tolerance == 1 else "s")


def _fmt_acc(summary: Summary) -> str:
    if summary.mean is None:
        return "no test/acc"
    spread = f" ± {100 * summary.std:.2f}" if summary.std is not None else " (1 seed)"
    return f"{100 * summary.mean:.2f}%{spread}"


def _missing(groups: Sequence[Group]) -> str:
    """Which of test/acc and params/nonzero no run of these groups has."""
    return (
        " and ".join(m for m in (ACC, NONZERO) if not any(g.summary(m).n for g in groups))
        or f"{ACC} and {NONZERO} together"
    )


def compression_vs_fcl(groups: Sequence[Group], tolerance: float) -> CompressionBlank:
    """Blank 1: percent fewer nonzero parameters of the paper's model than the dense FCL, at similar accuracy.

    Reference: the dense FCL group (model=fcl, prune=none); if several, the one whose
    compression/ratio_vs_fcl is closest to 1 (the baseline network itself), then the most runs.
    Candidates: paper-model groups (`is_paper_model`) with mean test/acc >= reference mean - tolerance/100.
    Chosen: the candidate with the fewest mean params/nonzero. Blank: 100 * (1 - nz_chosen / nz_reference).
    Supported when a candidate exists and it has fewer nonzero parameters than the reference.
    """
    name = "compression vs dense FCL"
    fcl = [g for g in groups if is_dense_fcl(g)]
    ptsne = [g for g in groups if is_paper_model(g)]
    refs = [g for g in fcl if g.mean(ACC) is not None and g.mean(NONZERO) is not None]
    measured = [g for g in ptsne if g.mean(ACC) is not None and g.mean(NONZERO) is not None]
    problems = []  # every reason at once, so one look says what to run or log
    if not fcl:
        problems.append("no dense FCL runs (model=fcl, prune=none)")
    elif not refs:
        problems.append(f"the dense FCL runs lack {_missing(fcl)}")
    if not ptsne:
        problems.append("no ptsne_moe runs")
    elif not measured:
        problems.append(f"the ptsne_moe runs lack {_missing(ptsne)}")
    ref = min(refs, key=lambda g: (abs((g.mean(RATIO) or math.inf) - 1.0), -len(g.runs))) if refs else None
    if problems or ref is None:
        return CompressionBlank(Claim(name, "not measurable", "; ".join(problems)), reference=ref)
    ref_acc, ref_nz = ref.mean(ACC), ref.mean(NONZERO)
    assert ref_acc is not None and ref_nz is not None
    floor = ref_acc - tolerance / 100 - 1e-12  # the epsilon keeps an exact-boundary mean inside
    within = [g for g in measured if (g.mean(ACC) or 0.0) >= floor]
    ref_text = f"dense FCL {_fmt_acc(ref.summary(ACC))}"
    if not within:
        best = max(measured, key=lambda g: g.mean(ACC) or 0.0)
        why = (
            f"no ptsne_moe configuration within {points(tolerance)} of the {ref_text} "
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
    if percent > 0:
        claim = Claim(name, "supported", f"{percent:.1f}% fewer nonzero parameters ({ratio:.2f}x); {detail}")
    else:
        claim = Claim(name, "not supported", f"no compression: {detail}")
    return CompressionBlank(claim, ref, chosen, percent, ratio, within)


def _match_key(group: Group, keys: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    return tuple((k, v) for k, v in group.key if k in keys)


def match_keys(keys: Sequence[str]) -> list[str]:
    """Keys two networks must share to be compared at matched sparsity: all but the network identity.

    Gate-specific params (params.gating.*) exist for one gate only, so they are not matched either.
    """
    return [k for k in keys if k not in IDENTITY_KEYS and not k.startswith(("params.gating.", "params.topology."))]


def _ci_text(p: Paired) -> str:
    s = p.summary
    if s.ci_low is None or s.ci_high is None:
        return "single seed: no CI" if p.n == 1 else "no paired seeds"
    return f"95% CI {s.ci_low:+.2f}..{s.ci_high:+.2f}, {p.n} seeds"


def _sgmoe_claims(acc: Paired, nz_ratio: float | None) -> tuple[Claim, Claim]:
    """The two claims against SGMoE for one matched pair.

    Accuracy improvement: supported iff >= 2 paired seeds and the paired 95% CI's lower bound > 0;
    not measurable below 2 paired seeds. Compression improvement: supported iff the paper's model has
    fewer mean nonzero parameters (ratio > 1) and its accuracy is not significantly worse (>= 2 paired
    seeds and the CI's upper bound >= 0); not measurable below 2 paired seeds.
    """
    s, ci = acc.summary, _ci_text(acc)
    name = "accuracy improvement vs SGMoE"
    if acc.n == 0 or s.mean is None:
        a = Claim(name, "not measurable", "no seed has test/acc in both")
    elif s.ci_low is None or s.ci_high is None:
        a = Claim(name, "not measurable", f"single seed: no CI (difference {s.mean:+.2f} points)")
    elif s.ci_low > 0:
        a = Claim(name, "supported", f"{s.mean:+.2f} points ({ci}), CI above 0")
    elif s.ci_high < 0:
        a = Claim(name, "not supported", f"significantly worse: {s.mean:+.2f} points ({ci})")
    else:
        a = Claim(name, "not supported", f"CI includes 0: {s.mean:+.2f} points ({ci})")

    name = "compression improvement vs SGMoE"
    if nz_ratio is None:
        c = Claim(name, "not measurable", "params/nonzero missing on one side")
    elif nz_ratio <= 1.0:
        c = Claim(name, "not supported", f"ptsne_moe has {1 / nz_ratio:.2f}x the nonzero parameters of SGMoE")
    else:
        fewer = f"{nz_ratio:.2f}x fewer nonzero parameters"
        if s.ci_high is None:
            c = Claim(name, "not measurable", f"{fewer}, but the accuracy difference has no CI ({ci})")
        elif s.ci_high < 0:
            c = Claim(name, "not supported", f"{fewer} at significantly worse accuracy ({ci})")
        else:
            c = Claim(name, "supported", f"{fewer}, accuracy not significantly worse ({ci})")
    return a, c


def versus_sgmoe(groups: Sequence[Group], keys: Sequence[str], prefer: Group | None = None) -> SgmoeBlank:
    """Blank 2: the paper's model vs SGMoE at matched sparsity.

    Match: a paper-model group and an SGMoE group (`is_sgmoe`) with equal values of `match_keys(keys)`
    (prune method, target sparsity or density when they vary, experts, k, data, ...). For each match,
    accuracy difference = mean over the common seeds (params.seed) of 100 * (acc_ptsne - acc_sgmoe)
    with a paired t CI (n = common seeds; none below 2); nonzero ratio = mean nonzero sgmoe / ptsne;
    ratio_diff = mean compression/ratio_vs_fcl ptsne - sgmoe. Headline: the match of `prefer` (blank 1's
    choice) if it has one, else the one with the most paired seeds. Claims: see `_sgmoe_claims`.
    """
    mkeys = match_keys(keys)
    ptsne = [g for g in groups if is_paper_model(g)]
    sgmoe = [g for g in groups if is_sgmoe(g)]
    if not ptsne or not sgmoe:
        missing = " and ".join(m for m, gs in (("ptsne_moe", ptsne), ("sgmoe", sgmoe)) if not gs)
        return SgmoeBlank([], None, f"no {missing} runs")
    matches = []
    for p in ptsne:
        for s in sgmoe:
            if _match_key(p, mkeys) != _match_key(s, mkeys):
                continue
            acc = paired_differences(p.by_seed(ACC), s.by_seed(ACC), scale=100.0)
            nz_p, nz_s = p.mean(NONZERO), s.mean(NONZERO)
            nz_ratio = nz_s / nz_p if nz_p and nz_s is not None else None
            r_p, r_s = p.mean(RATIO), s.mean(RATIO)
            ratio_diff = r_p - r_s if r_p is not None and r_s is not None else None
            matches.append(
                SgmoeMatch(p, s, _match_key(p, mkeys), acc, nz_ratio, ratio_diff, *_sgmoe_claims(acc, nz_ratio))
            )
    if not matches:
        return SgmoeBlank([], None, "no ptsne_moe and sgmoe configurations share a prune setting")
    headline = next((m for m in matches if m.ptsne is prefer), None)
    if headline is None:
        headline = max(matches, key=lambda m: m.acc.n)  # max keeps the first of equals: table order
    return SgmoeBlank(matches, headline)


def _blank1_text(blank: CompressionBlank) -> str:
    if blank.percent is None or blank.ratio is None:
        return "?"
    if blank.percent >= 0:
        return f"{blank.percent:.1f} percent ({blank.ratio:.1f}x fewer nonzero parameters)"
    return f"{blank.percent:.1f} percent ({1 / blank.ratio:.1f}x more nonzero parameters)"


def _blank2_text(blank: SgmoeBlank) -> str:
    m = blank.headline
    if m is None:
        return "?"
    s = m.acc.summary
    acc = "? point accuracy difference (no paired seeds)"
    if s.mean is not None:
        acc = f"{s.mean:+.2f} point ({_ci_text(m.acc)}) accuracy difference"
    if m.nonzero_ratio is None:
        size = "? nonzero-parameter ratio"
    elif m.nonzero_ratio >= 1:
        size = f"{m.nonzero_ratio:.2f}x fewer nonzero parameters"
    else:
        size = f"{1 / m.nonzero_ratio:.2f}x more nonzero parameters"
    return f"{acc} and {size} ({m.setting_label})"


def sentence(compression: CompressionBlank, sgmoe: SgmoeBlank) -> str:
    """The abstract's sentence with both blanks filled from the data ("?" where not measurable)."""
    return (
        f"This model achieves a compression ratio of {_blank1_text(compression)} over traditional FCL "
        f"neural networks and a {_blank2_text(sgmoe)} over SGMoE neural networks while achieving the "
        "similar performance metrics."
    )


def context_keys(keys: Sequence[str]) -> list[str]:
    """Grouping keys that are not about the network (data, user keys): blanks are computed per value."""
    return [k for k in keys if k not in (*BASE_KEYS, *IDENTITY_KEYS) and not k.startswith(_NETWORK_PREFIXES)]


def analyse(groups: Sequence[Group], keys: Sequence[str], tolerance: float) -> list[Findings]:
    """The two blanks, the sentence and the claims, once per context (e.g. per data set)."""
    ckeys = context_keys(keys)
    contexts: dict[tuple[tuple[str, str | None], ...], list[Group]] = {}
    for g in groups:
        contexts.setdefault(_match_key(g, ckeys), []).append(g)
    findings = []
    for ctx, members in contexts.items():
        blank1 = compression_vs_fcl(members, tolerance)
        blank2 = versus_sgmoe(members, keys, prefer=blank1.chosen)
        claims = [blank1.claim]
        if blank2.headline is None:
            claims += [
                Claim("accuracy improvement vs SGMoE", "not measurable", blank2.reason),
                Claim("compression improvement vs SGMoE", "not measurable", blank2.reason),
            ]
        else:
            where = f" [{blank2.headline.setting_label}]"
            claims += [
                Claim(c.claim + where, c.status, c.reason)
                for c in (blank2.headline.accuracy_claim, blank2.headline.compression_claim)
            ]
        findings.append(Findings(ctx, blank1, blank2, sentence(blank1, blank2), claims))
    return findings


# --------------------------------------------------------------------------- the whole report


@dataclass
class Report:
    """Everything `ssmoe report` shows, before rendering."""

    tracking_uri: str
    experiments: list[str]
    keys: list[str]
    groups: list[Group]
    metrics: list[MetricSpec]  # the columns: METRICS logged by at least one run
    findings: list[Findings]
    tolerance: float
    excluded: list[RunRecord] = field(default_factory=list)  # train runs not FINISHED
    show_excluded: bool = False  # --include-failed: list them
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    report_run: str | None = None


def build_report(
    runs: Sequence[RunRecord],
    *,
    tracking_uri: str = "",
    experiments: Sequence[str] = (),
    extra_keys: Sequence[str] = (),
    tolerance: float = 1.0,
    excluded: Sequence[RunRecord] = (),
    show_excluded: bool = False,
) -> Report:
    """Group finished training runs, summarise the metrics and fill the blanks."""
    keys = choose_group_keys(runs, extra_keys)
    groups = group_runs(runs, keys)
    metrics = [m for m in METRICS if any(run.metric(m.name) is not None for run in runs)]
    notes = []
    absent = [m.name for m in METRICS if m not in metrics]
    if runs and absent:
        notes.append(f"not logged by any selected run: {', '.join(absent)}")
    unknown = [k for k in extra_keys if runs and all(run.get(k) is None for run in runs)]
    if unknown:  # most likely a typo (params.x vs tags): say so rather than show a column of dashes
        notes.append(f"no selected run has the grouping key(s): {', '.join(unknown)} (tags: NAME; params: params.NAME)")
    dup = sum(g.duplicates for g in groups)
    if dup:
        notes.append(f"{dup} run(s) repeat a seed of their configuration: only the latest run per seed is counted")
    single = [g.label for g in groups if len(g.runs) == 1]
    if single:
        notes.append(f"{len(single)} configuration(s) with a single run: std and CI are n/a ({'; '.join(single)})")
    partial = sorted(
        {m.name for g in groups for m in metrics if 0 < g.summary(m.name).n < len(g.runs)},
        key=[m.name for m in METRICS].index,
    )
    if partial:
        notes.append(f"missing in some runs (n per cell is shown): {', '.join(partial)}")
    if excluded:
        how = "listed below" if show_excluded else "--include-failed lists them"
        notes.append(f"{len(excluded)} training run(s) not FINISHED were left out ({how})")
    return Report(
        tracking_uri=tracking_uri,
        experiments=list(experiments),
        keys=keys,
        groups=groups,
        metrics=metrics,
        findings=analyse(groups, keys, tolerance) if groups else [],
        tolerance=tolerance,
        excluded=list(excluded),
        show_excluded=show_excluded,
        notes=notes,
    )
