"""The claims across (dataset, architecture) pairs: the overall verdict rule by hand, and a report over
hand-made runs of three data sets where the proposed model wins on two and loses on one."""

from __future__ import annotations

import json

import pytest
from test_report_frontier import BUDGETS, FCL, PTSNE, SGMOE, series

from ssmoe_cli.report.build import build_report
from ssmoe_cli.report.pairs import PairCell, overall
from ssmoe_cli.report.render import render

S, N, M = "supported", "not supported", "not measurable"


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([S, S, S], (S, "holds on 3 of 3 pair(s)")),
        ([S, S], (M, "holds on 2 of 2 pair(s); a general claim needs at least 3 pairs")),
        ([S, N, S], (N, "holds on 2 of 3 pair(s); not supported on 1")),
        ([S, M, S], (M, "holds on 2 of 3 pair(s); not measurable on 1")),
        ([N, M, S], (N, "holds on 1 of 3 pair(s); not supported on 1")),
    ],
)
def test_overall_verdict_needs_every_pair_and_three_of_them(statuses, expected):
    assert overall([PairCell(s, "") for s in statuses]) == expected


def pair_runs(data: str, ptsne) -> list:
    tags = {"data": data}
    return [
        *series("fcl", "magnitude", FCL, **tags),
        *series("ptsne_moe", "obd", ptsne, active=0.5, gating="ptsne", **tags),
        *series("sgmoe", "obd", SGMOE, active=0.5, gating="noisy_topk", **tags),
    ]


def test_report_gives_each_pair_its_verdict_and_counts_the_pairs(tmp_path):
    worse = [a - 0.03 for a in PTSNE]  # the proposed model never reaches the level on this pair
    runs = [*pair_runs("a", PTSNE), *pair_runs("b", PTSNE), *pair_runs("c", worse)]
    for run in runs:
        if run.tags["model"] == "ptsne_moe":
            run.metrics["gate/trustworthiness"] = 0.95 if run.tags["data"] == "a" else 0.9
            run.metrics["gate/knn1_acc"] = 0.6
    report = build_report(runs, tolerance=0.5)
    pairs = report.pairs
    assert pairs is not None and pairs.labels == ["data=a", "data=b", "data=c"]
    dense = next(c for c in pairs.claims if c.claim == "iso-accuracy ratio vs the dense fcl on nonzero parameters")
    # Per pair the verdict is the pair's own trade-off verdict, never recomputed.
    for t, cell in zip(report.tradeoffs, dense.cells, strict=True):
        assert cell.status == t.ratio("dense").status
    assert [c.status for c in dense.cells][:2] == [S, S] and dense.cells[2].status != S
    assert dense.status != S and dense.reason.startswith("holds on 2 of 3 pair(s)")
    # The map quality: the least-pruned ptsne_moe configuration of each pair.
    assert [g.trustworthiness for g in pairs.gates] == ["0.950 [0.950, 0.950]", "0.900 [0.900, 0.900]"] + [
        "0.900 [0.900, 0.900]"
    ]
    assert all(str(BUDGETS[0]) in g.configuration for g in pairs.gates)
    md = render(report, "markdown", tmp_path)
    assert "## The claims across (dataset, architecture) pairs" in md and "holds on 2 of 3 pair(s)" in md
    data = json.loads(render(report, "json", tmp_path))
    assert data["pairs"]["labels"] == ["data=a", "data=b", "data=c"]


def test_one_pair_adds_no_cross_pair_section():
    report = build_report(pair_runs("a", PTSNE), tolerance=0.5)
    assert report.tradeoffs and report.pairs is None
