"""The report chooses on validation accuracy only, and load balance / expert correlation are computed claims.

Hand-made RunRecords through the report's pure functions (report/claims.py): where validation and
test accuracy disagree the choice follows validation and the test accuracy shown is the chosen
configuration's; runs without val/acc are "not measurable", never chosen on test/acc; the expert
claims' paired intervals are checked against values computed by hand. One case goes through the
real CLI: runs logged to an MLflow store, read back by `ssmoe report --format json`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

from ssmoe_cli.report.claims import compression_vs_dense, headline_claims, versus
from ssmoe_cli.report.records import Group, RunRecord, group_runs

FCL_NONZERO = 266_610.0
T975_2 = 4.302652729911275  # t(0.975, df=2)
ROUTING = {"ptsne_moe": ("ptsne", "small_world"), "sgmoe": ("noisy_topk", "isolated")}


def runs_of(
    model: str,
    prune: str,
    sparsity: str | None,
    val: list[float] | None,
    test: list[float],
    nonzero: float,
    **per_seed: list[float],
) -> list[RunRecord]:
    """One run per seed 0, 1, ...; `per_seed` maps a metric name (load -> experts/load_cv2, corr ->
    experts/output_corr) to its value per seed; val=None: runs from before val/acc was logged."""
    names = {"load": "experts/load_cv2", "corr": "experts/output_corr"}
    out = []
    for seed, acc in enumerate(test):
        tags = {"model": model, "prune": prune}
        if model in ROUTING:
            tags["gating"], tags["topology"] = ROUTING[model]
        params = {"seed": str(seed)} | ({"prune.target_sparsity": sparsity} if sparsity else {})
        metrics = {"test/acc": acc, "params/nonzero": nonzero}
        metrics |= {"val/acc": val[seed]} if val is not None else {}
        metrics |= {names[k]: v[seed] for k, v in per_seed.items()}
        rid = f"{model}-{prune}-{sparsity}-{seed}"
        out.append(RunRecord(rid, start_time=len(out), tags=tags, params=params, metrics=metrics))
    return out


def by_label(groups: list[Group], label: str) -> Group:
    return next(g for g in groups if g.label == label)


# Validation and test disagree. Dense FCL: 90% on both. On test, the 95%-sparse ptsne_moe (10,000
# weights) looks within 1 point and the 90%-sparse one (20,000) 5 points below; on validation it is
# the other way round. Choosing on validation must pick the 20,000-weight configuration.
DISAGREE = [
    *runs_of("fcl", "none", None, [0.90, 0.90, 0.90], [0.90, 0.90, 0.90], FCL_NONZERO),
    *runs_of("ptsne_moe", "magnitude", "0.9", [0.895, 0.895, 0.895], [0.84, 0.85, 0.86], 20_000.0),
    *runs_of("ptsne_moe", "magnitude", "0.95", [0.86, 0.87, 0.88], [0.90, 0.90, 0.90], 10_000.0),
    *runs_of("sgmoe", "magnitude", "0.9", [0.88, 0.88, 0.88], [0.88, 0.88, 0.88], 21_000.0),
    *runs_of("sgmoe", "magnitude", "0.95", [0.86, 0.86, 0.86], [0.86, 0.86, 0.86], 11_000.0),
]
CHOSEN = "ptsne_moe / magnitude / target_sparsity=0.9"
TEST_BEST = "ptsne_moe / magnitude / target_sparsity=0.95"


def test_validation_chooses_where_test_would_choose_otherwise():
    groups, _ = group_runs(DISAGREE)
    blank = compression_vs_dense(groups, tolerance=1.0)
    assert blank.claim.status == "supported"
    assert blank.chosen is not None and blank.chosen.label == CHOSEN
    assert [g.label for g in blank.within_tolerance] == [CHOSEN]  # 0.95 is 3 points below on validation
    assert blank.percent == pytest.approx(100 * (1 - 20_000 / FCL_NONZERO))
    # The test accuracy shown is the chosen configuration's (85.00 ± 1.00), next to its validation accuracy.
    assert blank.claim.reason.endswith(
        "; chosen on validation accuracy, within 1 point of the dense fcl: 89.50% ± 0.00 vs 90.00% ± 0.00; "
        "test accuracy (reported, not used to choose): 85.00% ± 1.00 vs 90.00% ± 0.00"
    )


def test_cli_reads_val_acc_from_mlflow_and_chooses_on_it(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("sel", artifact_location=str(tmp_path / "mlruns"))
    for run in DISAGREE:
        rid = client.create_run(exp, tags={"run_type": "train", **run.tags}, start_time=run.start_time).info.run_id
        for key, value in run.params.items():
            client.log_param(rid, key, value)
        for key, value in run.metrics.items():
            client.log_metric(rid, key, value)
        client.set_terminated(rid, "FINISHED")
    args = [sys.executable, "-m", "ssmoe_cli", "report", "-e", "sel", "--format", "json"]
    proc = subprocess.run(args, cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (found,) = json.loads(proc.stdout)["findings"]
    blank = found["compression_vs_dense"]
    assert blank["chosen"] == CHOSEN and blank["within_tolerance"] == [CHOSEN]
    assert blank["chosen_acc"]["mean"] == pytest.approx(0.85)  # its test accuracy, reported
    (claim,) = [c for c in found["claims"] if c["claim"] == "compression vs dense fcl"]
    assert claim["status"] == "supported" and "test accuracy (reported, not used to choose): 85.00%" in claim["reason"]


def test_best_named_and_headline_pair_chosen_on_validation():
    groups, keys = group_runs(DISAGREE)
    # Tolerance 0.2 points: nothing within on validation; the best named is the best on validation.
    blank = compression_vs_dense(groups, tolerance=0.2)
    assert blank.claim.status == "not supported" and blank.chosen is None
    assert f"(best: {CHOSEN} at 89.50% ± 0.00 validation, 85.00% ± 1.00 test)" in blank.claim.reason
    # Two matched pairs and no preferred one: the headline is the pair whose proposed configuration
    # is best on validation (0.9), not the one best on test (0.95).
    blank2 = versus(groups, keys, prefer=None)
    assert len(blank2.matches) == 2 and blank2.headline is not None
    assert blank2.headline.proposed.label == CHOSEN
    assert blank2.headline.other.label == "sgmoe / magnitude / target_sparsity=0.9"
    # Its reported test difference is that pair's: 84, 85, 86 vs 88 -> -3 points on average.
    assert blank2.headline.acc.summary.mean == pytest.approx(-3.0)
    # Blank 1's choice is preferred when it has a match.
    preferred = versus(groups, keys, prefer=by_label(groups, TEST_BEST))
    assert preferred.headline is not None and preferred.headline.proposed.label == TEST_BEST


def test_missing_val_acc_is_not_measurable_never_test():
    old = [
        *runs_of("fcl", "none", None, None, [0.90, 0.90], FCL_NONZERO),
        *runs_of("ptsne_moe", "magnitude", "0.9", None, [0.90, 0.90], 20_000.0),
        *runs_of("ptsne_moe", "magnitude", "0.95", None, [0.89, 0.90], 10_000.0),
        *runs_of("sgmoe", "magnitude", "0.9", None, [0.88, 0.88], 21_000.0),
        *runs_of("sgmoe", "magnitude", "0.95", None, [0.86, 0.86], 11_000.0),
    ]
    groups, keys = group_runs(old)
    blank = compression_vs_dense(groups, tolerance=1.0)
    assert blank.claim.status == "not measurable" and blank.chosen is None and blank.percent is None
    assert blank.claim.reason == (
        "the dense fcl runs lack val/acc (configurations are chosen on val/acc only, never on test/acc); "
        "the ptsne_moe runs lack val/acc (configurations are chosen on val/acc only, never on test/acc)"
    )
    # Only the proposed runs lack it: the reason names them alone.
    mixed = runs_of("fcl", "none", None, [0.9, 0.9], [0.9, 0.9], FCL_NONZERO) + old[2:]
    blank = compression_vs_dense(group_runs(mixed)[0], tolerance=1.0)
    assert blank.claim.status == "not measurable" and blank.claim.reason.startswith("the ptsne_moe runs lack val/acc")
    # Two matched pairs and nothing to choose the headline by: no headline, all four claims say why.
    blank2 = versus(groups, keys)
    assert len(blank2.matches) == 2 and blank2.headline is None
    assert "2 matched pairs and no val/acc to choose the headline by" in blank2.reason
    listed = headline_claims(blank2)
    assert [c.claim for c in listed] == [
        "accuracy improvement vs sgmoe",
        "compression improvement vs sgmoe",
        "more balanced expert load vs sgmoe",
        "less correlated expert outputs vs sgmoe",
    ]
    assert {c.status for c in listed} == {"not measurable"} and {c.reason for c in listed} == {blank2.reason}
    # A single matched pair is no choice: it is the headline, validation accuracy or not.
    single = versus(*group_runs(old[:4] + old[6:8]))  # fcl, ptsne_moe and sgmoe at 0.9 only
    assert len(single.matches) == 1 and single.headline is single.matches[0]


def expert_pair(load_p: list[float], load_s: list[float], corr_p=None, corr_s=None) -> list[RunRecord]:
    """ptsne_moe and sgmoe at magnitude 0.9 over the seeds of the lists, with their expert metrics."""
    n = len(load_p)
    extra_p = {"load": load_p} | ({"corr": corr_p} if corr_p else {})
    extra_s = {"load": load_s} | ({"corr": corr_s} if corr_s else {})
    return [
        *runs_of("ptsne_moe", "magnitude", "0.9", [0.9] * n, [0.9] * n, 20_000.0, **extra_p),
        *runs_of("sgmoe", "magnitude", "0.9", [0.9] * len(load_s), [0.9] * len(load_s), 21_000.0, **extra_s),
    ]


def headline(runs: list[RunRecord]):
    groups, keys = group_runs(runs)
    blank = versus(groups, keys)
    assert blank.headline is not None
    return blank.headline


def test_load_balance_supported_with_the_paired_interval_computed_by_hand():
    m = headline(expert_pair([0.05, 0.06, 0.07], [0.15, 0.14, 0.18], [0.10, 0.12, 0.11], [0.25, 0.24, 0.26]))
    # Differences -0.10, -0.08, -0.11: mean -0.09667, sample std 0.015275, half-width t * std / sqrt(3).
    diffs = [-0.10, -0.08, -0.11]
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert std == pytest.approx(0.0152753, abs=1e-6)
    low, high = mean - T975_2 * std / math.sqrt(3), mean + T975_2 * std / math.sqrt(3)
    assert (low, high) == pytest.approx((-0.134612, -0.058721), abs=1e-6)
    s = m.load.summary
    assert m.load.seeds == ("0", "1", "2") and (s.mean, s.ci_low, s.ci_high) == pytest.approx((mean, low, high))
    assert m.balance_claim.status == "supported"
    assert m.balance_claim.claim == "more balanced expert load vs sgmoe"
    assert m.balance_claim.reason == (
        "-0.097 (95% CI -0.135..-0.059, 3 seeds), CI below 0; experts/load_cv2 (CV² of the experts' shares "
        "of test assignments, 0 = even), ptsne_moe − sgmoe paired by seed"
    )
    # Correlation: -0.15, -0.12, -0.15 -> supported too, named by its own metric.
    assert m.correlation_claim.status == "supported" and "experts/output_corr (mean pairwise Pearson" in (
        m.correlation_claim.reason
    )
    # The abstract's list names the headline's setting after each claim.
    claims = {c.claim: c for c in headline_claims(versus(*group_runs(expert_pair([0.05, 0.06, 0.07], [0.15] * 3))))}
    assert claims["more balanced expert load vs sgmoe [prune=magnitude]"].status == "supported"


def test_load_balance_not_supported_both_ways_and_not_measurable():
    # -0.02 +0.03 -0.01 ... the interval includes 0.
    m = headline(expert_pair([0.10, 0.12, 0.10], [0.12, 0.09, 0.11]))
    assert m.balance_claim.status == "not supported" and m.balance_claim.reason.startswith("CI includes 0: +0.000")
    assert (m.load.summary.ci_low, m.load.summary.ci_high) == pytest.approx((-0.065724, 0.065724), abs=1e-6)
    # +0.03 +0.05 +0.04: the proposed model's load is significantly less balanced.
    m = headline(expert_pair([0.13, 0.15, 0.14], [0.10, 0.10, 0.10]))
    assert m.balance_claim.status == "not supported"
    assert m.balance_claim.reason.startswith("significantly less balanced: +0.040 (95% CI +0.015..+0.065, 3 seeds)")
    # One seed pairs (sgmoe ran seed 0 only): no interval, no verdict.
    m = headline(expert_pair([0.05, 0.06, 0.07], [0.15]))
    assert m.load.n == 1 and m.balance_claim.status == "not measurable"
    assert m.balance_claim.reason.startswith("single seed: no CI (difference -0.100)")
    # The compared runs never logged the metric: the reason names the side and the metric.
    m = headline(expert_pair([0.05, 0.06, 0.07], [0.15, 0.14, 0.18]))
    assert m.correlation_claim.status == "not measurable"
    assert m.correlation_claim.reason.startswith("the ptsne_moe and sgmoe runs lack experts/output_corr")


def test_expert_claims_follow_the_pair_chosen_on_validation():
    # Two matched pairs: at 0.9 the load claim is supported, at 0.95 not; the 0.95 pair is better on
    # validation, so its (not supported) claim is the headline's, whatever the test accuracy says.
    n = [0.9, 0.9, 0.9]
    runs = [
        *runs_of("ptsne_moe", "magnitude", "0.9", [0.88] * 3, [0.95] * 3, 2e4, load=[0.05, 0.06, 0.07]),
        *runs_of("sgmoe", "magnitude", "0.9", n, n, 2e4, load=[0.15, 0.14, 0.18]),
        *runs_of("ptsne_moe", "magnitude", "0.95", [0.89] * 3, [0.80] * 3, 1e4, load=[0.10, 0.12, 0.10]),
        *runs_of("sgmoe", "magnitude", "0.95", n, n, 1e4, load=[0.12, 0.09, 0.11]),
    ]
    groups, keys = group_runs(runs)
    blank = versus(groups, keys)
    assert {m.proposed.label: m.balance_claim.status for m in blank.matches} == {
        CHOSEN: "supported",
        TEST_BEST: "not supported",
    }
    assert blank.headline is not None and blank.headline.proposed.label == TEST_BEST
    listed = {c.claim.split(" [")[0]: c for c in headline_claims(blank)}
    assert listed["more balanced expert load vs sgmoe"].status == "not supported"
