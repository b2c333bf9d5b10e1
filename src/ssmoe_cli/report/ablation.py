"""The routing ablation (issue 14): every gate against the paper's t-SNE gate, paired by seed.

A report has an ablation wherever configurations differ only in their gate (`gating` is a shown key)
and one of them uses a reference gate: `ptsne_knn` (the t-SNE gate with its better, whole-set kNN map;
experiment=ablation_routing_map) where present, else `ptsne` (experiment=ablation_routing;
ablation_gating too). Each other gate is a row: its validation and test accuracy (mean [95% t CI] over
seeds), its difference from the reference paired by seed (gate − reference, points, paired t 95% CI
over the seeds both ran), and its routing diagnostics (mean over seeds). Validation accuracy decides,
test accuracy is only reported (report/selection.py's rule). Each row's verdict:

- the interval is below 0: the reference is better, so what the control removes carries an effect;
- above 0: the control is better, so that ingredient of the reference costs accuracy;
- includes 0: the ingredient is not shown to matter (not shown: three seeds detect only large effects);
- fewer than 2 paired seeds: not measurable.

Each interval is 95% on its own: with seven controls, one spurious verdict in some experiments is
expected by chance. The sentence names which ingredients carry the effect, if any.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ssmoe_cli import metrics as M
from ssmoe_cli.report.frontier_text import _paired as _points  # "+0.12 [-0.30, +0.54]", "+0.12 (1 seed)"
from ssmoe_cli.report.intervals import Paired, Summary, paired_differences
from ssmoe_cli.report.records import Group
from ssmoe_cli.report.verdicts import Status

KEY = "gating"
# The paper's gate: with its better map where a set of configurations has it, else the batch-map one.
REFERENCES = ("ptsne_knn", "ptsne")
# What each control takes away from the paper's gate, or which router of the field it is. "ptsne" is
# a control only against ptsne_knn (the same gate with the batch-local t-SNE objective and small f).
REMOVES = {
    "ptsne": "the better map (whole-set kNN objective, larger f)",
    "ptsne_random": "the k-means placement of the centres",
    "ptsne_knn_random": "the k-means placement of the centres",
    "pca_map": "the t-SNE objective",
    "input_kmeans": "the 2-D map",
    "lsh": "learned routing",
}
ROUTERS = {
    "noisy_topk": "noisy top-k (Shazeer 2017)",
    "switch": "the Switch router (Fedus 2021)",
    "expert_choice": "expert choice (Zhou 2022)",
    "softmax": "a dense softmax gate",
}
# The diagnostics shown per gate (mean over seeds): (metric, column header, format).
DIAGNOSTICS = (
    (M.DEAD_EXPERTS, "dead", "{:.1f}"),
    (M.MAX_VIO, "MaxVio", "{:.2f}"),
    (M.LOAD_CV2, "load CV²", "{:.3f}"),
    (M.OUTPUT_CORR_ROUTED, "routed corr", "{:.3f}"),
    (M.CLASS_MI, "class MI", "{:.2f}"),
    (M.GATE_TRUSTWORTHINESS, "T(12)", "{:.3f}"),
    (M.GATE_KNN1_ACC, "1-NN", "{:.3f}"),
)
DASH = "—"


@dataclass(frozen=True)
class Row:
    """One gate of the ablation: its group, and (a control only) its differences from the reference."""

    gate: str
    group: Group
    val: Paired | None  # gate − reference, validation accuracy in points; None for the reference
    test: Paired | None
    status: Status | None
    claim: str  # what the row tests: "the t-SNE objective matters", "ptsne beats noisy top-k (...)"
    short: str  # the verdict in words ("the t-SNE objective is not shown to matter"; "reference")
    verdict: str  # the same after the numbers it rests on (empty for the reference)


@dataclass(frozen=True)
class Ablation:
    """The gates of configurations that differ only in their gate, the reference first."""

    context: str  # what the configurations share, as a label
    rows: list[Row]
    sentence: str

    @property
    def reference(self) -> str:
        return self.rows[0].gate


def _what(gate: str) -> str:
    return REMOVES.get(gate) or ROUTERS.get(gate) or f"gate {gate}"


def claim(gate: str, reference: str = "ptsne") -> str:
    """What a row tests: that the ingredient its control removes matters, or that the reference beats a
    router."""
    return f"{REMOVES[gate]} matters" if gate in REMOVES else f"{reference} beats {_what(gate)}"


def judge(gate: str, val: Paired, reference: str = "ptsne") -> tuple[Status, str, str]:
    """(status, verdict in words, the same after its numbers) from the paired validation interval."""
    s = val.summary
    head = f"{gate} vs {reference}: {_points(val)} points (validation, paired by seed)"
    if s.mean is None or s.ci_low is None or s.ci_high is None:
        short = f"{'no seed' if val.n == 0 else 'a single seed'} pairs with {reference}: no interval"
        return "not measurable", short, f"{head}: {short}"
    control, what = gate in REMOVES, _what(gate)
    if s.ci_high < 0:
        short = f"{reference} is better: " + (f"{what} matters" if control else f"{reference} beats {what}")
        return "supported", short, f"{head}: {short}"
    if s.ci_low > 0:
        short = f"{gate} is better: " + (f"{what} costs accuracy" if control else f"{what} beats {reference}")
        return "not supported", short, f"{head}: {short}"
    short = f"{what} is not shown to matter" if control else f"not shown to differ from {what}"
    return "not supported", short, f"{head}: {short}"


def _better(r: Row) -> bool:
    """The gate's whole validation interval is above the reference's (it is the better one)."""
    return r.val is not None and r.val.summary.ci_low is not None and r.val.summary.ci_low > 0


def _sentence(rows: Sequence[Row]) -> str:
    """Which ingredients carry the effect, if any, and how the reference stands against the field's
    routers."""
    ref = rows[0].gate
    judged = [r for r in rows if r.status is not None]
    # Only gates with an interval say anything; the others are listed as not measurable.
    measured = [r for r in judged if r.status != "not measurable"]
    controls = [r for r in measured if r.gate in REMOVES]
    routers = [r for r in measured if r.gate not in REMOVES]
    carry = [_what(r.gate) for r in controls if r.status == "supported"]
    parts = []
    if carry:
        parts.append(f"the paper's gate owes its effect to {', '.join(carry)} (the control without it is worse)")
    elif controls:
        parts.append(f"no ingredient of the paper's gate is shown to carry an effect (no control is worse than {ref})")
    costs = [_what(r.gate) for r in controls if _better(r)]
    if costs:
        parts.append(f"{', '.join(costs)} costs accuracy (the control without it is better)")
    worse = [r.gate for r in routers if r.status == "supported"]
    better = [r.gate for r in routers if _better(r)]
    if worse or better:
        parts.append(
            f"of the other routers {ref} beats {', '.join(worse) or 'none'} and loses to {', '.join(better) or 'none'}"
        )
    elif routers:
        parts.append(f"{ref} is not shown to differ from the other routers ({', '.join(r.gate for r in routers)})")
    unknown = [r.gate for r in judged if r.status == "not measurable"]
    if unknown:
        parts.append(f"not measurable: {', '.join(unknown)}")
    text = "; ".join(parts) or "no other gate to compare"
    return text[0].upper() + text[1:] + " (validation accuracy, paired 95% intervals)."


def _ablation(context: str, groups: Sequence[Group], reference: str) -> Ablation:
    ref = next(g for g in groups if g.value(KEY) == reference)
    rows = [Row(reference, ref, None, None, None, "", "reference", "")]
    for g in groups:
        if g is ref:
            continue
        gate = str(g.value(KEY))
        val = paired_differences(g.by_seed(M.VAL_ACC), ref.by_seed(M.VAL_ACC), scale=100)
        test = paired_differences(g.by_seed(M.TEST_ACC), ref.by_seed(M.TEST_ACC), scale=100)
        status, short, verdict = judge(gate, val, reference)
        rows.append(Row(gate, g, val, test, status, claim(gate, reference), short, verdict))
    return Ablation(context, rows, _sentence(rows))


def ablations(groups: Sequence[Group], keys: Sequence[str], names: dict[str, str]) -> list[Ablation]:
    """One ablation per set of configurations that differ only in their gate and include a reference
    gate (REFERENCES, the first one present)."""
    if KEY not in keys:
        return []
    sets: dict[tuple, list[Group]] = {}
    for g in groups:
        sets.setdefault(tuple((k, v) for k, v in g.key if k != KEY), []).append(g)
    out = []
    for shared, members in sets.items():
        gates = [g.value(KEY) for g in members]
        reference = next((r for r in REFERENCES if r in gates), None)
        if reference is not None and len(set(gates)) > 1:
            label = ", ".join(f"{names.get(k, k)}={v}" for k, v in shared if v is not None)
            out.append(_ablation(label, members, reference))
    return out


# --------------------------------------------------------------------------- the table


def _acc(s: Summary) -> str:
    if s.mean is None:
        return DASH
    if s.ci_low is None or s.ci_high is None:
        return f"{100 * s.mean:.2f}"
    return f"{100 * s.mean:.2f} [{100 * s.ci_low:.2f}, {100 * s.ci_high:.2f}]"


def header(reference: str) -> list[str]:
    """The table's columns for an ablation against `reference`."""
    return [
        "gate",
        "seeds",
        "val acc %",
        "test acc %",
        f"Δ val vs {reference}",
        f"Δ test vs {reference}",
        *(h for _, h, _ in DIAGNOSTICS),
        "verdict",
    ]


def caption(reference: str) -> str:
    return (
        f"accuracy: mean [95% t CI] over seeds; Δ: gate − {reference} in points, paired by seed [paired t 95% "
        "CI]; validation decides, test is only reported; diagnostics: mean over seeds (— not logged: T(12) and "
        "1-NN only for gates with a 2-D map); each interval is 95% on its own"
    )


def rows(a: Ablation) -> list[list[str]]:
    """The table's rows (header()'s columns), the reference first."""
    out = []
    for r in a.rows:
        g = r.group
        diag = [fmt.format(m) if (m := g.mean(name)) is not None else DASH for name, _, fmt in DIAGNOSTICS]
        deltas = [DASH, DASH] if r.val is None or r.test is None else [_points(r.val), _points(r.test)]
        acc = [_acc(g.summary(M.VAL_ACC)), _acc(g.summary(M.TEST_ACC))]
        out.append([r.gate, str(len(g.seeds)), *acc, *deltas, *diag, r.short])
    return out
