"""Trade-off curves of `ssmoe report`: iso-accuracy budgets by hand, bootstrap coverage, the (a)(b)(c) ratios and
their verdicts on hand-made runs, the rendered section and the plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import search_runs

from ssmoe_cli.report.build import build_report
from ssmoe_cli.report.frontier_analysis import tradeoff
from ssmoe_cli.report.frontier_iso import (
    iso_arrays,
    iso_budget,
    percentile_interval,
    ratio_bounds,
    resample_means,
)
from ssmoe_cli.report.records import RunRecord
from ssmoe_cli.report.roles import Role, Roles

BUDGETS = (266610, 133305, 66652, 33326, 16663, 8332)
NOISE = (-0.001, 0.0, 0.001)  # per seed: mean as given, sample std 0.001


def series(model: str, prune: str, accs, budgets=BUDGETS, active: float = 1.0, noise=NOISE, **tags) -> list[RunRecord]:
    """Runs of one (model, prune) series: val/acc = acc + noise per seed, test/acc 0.2 points lower."""
    out = []
    for budget, acc in zip(budgets, accs, strict=True):
        for seed, d in enumerate(noise):
            out.append(
                RunRecord(
                    f"{model}-{prune}-{budget}-{seed}",
                    tags={"run_type": "train", "model": model, "prune": prune, **tags},
                    params={"seed": str(seed), "prune.target_nonzero": str(budget)},
                    metrics={
                        "val/acc": acc + d,
                        "test/acc": acc + d - 0.002,
                        "params/nonzero": float(budget),
                        "params/active_per_sample": budget * active,
                        "flops/per_sample": budget * active,
                        "time/infer_ms_b1": 0.1 + budget / 1e6,
                        "prune/sparsity": 1 - budget / BUDGETS[0] if model == "fcl" else 0.5,
                    },
                )
            )
    return out


FCL = [0.890, 0.890, 0.888, 0.884, 0.875, 0.860]
PTSNE = [0.889, 0.889, 0.889, 0.888, 0.886, 0.880]
SGMOE = [0.888, 0.887, 0.884, 0.878, 0.870, 0.850]


def frontier_runs(ptsne=PTSNE, noise=NOISE) -> list[RunRecord]:
    return [
        *series("fcl", "magnitude", FCL, noise=noise),
        *series("fcl", "obd", FCL[:1], budgets=BUDGETS[:1], noise=noise),  # the same dense network: pooled
        *series("ptsne_moe", "obd", ptsne, active=0.5, noise=noise, gating="ptsne"),
        *series("sgmoe", "obd", SGMOE, active=0.5, noise=noise, gating="noisy_topk"),
    ]


def analyse(runs, tolerance=0.5, roles=Roles()):
    report = build_report(runs, tolerance=tolerance, roles=roles)
    return report, tradeoff(report.groups, report.keys, tolerance, roles)


# --------------------------------------------------------------------------- iso-accuracy budgets


def test_iso_budget_interpolates_linearly_in_log_budget():
    iso = iso_budget([(1000, 0.90), (500, 0.89), (250, 0.85)], 0.87)
    expected = math.exp(math.log(500) + (0.89 - 0.87) / (0.89 - 0.85) * (math.log(250) - math.log(500)))
    assert (
        iso.state == "reached" and iso.value == pytest.approx(expected) and expected == pytest.approx(353.553, abs=1e-3)
    )
    assert (iso.low, iso.high, iso.index) == (iso.value, iso.value, 1)  # the last point at/above: 500
    # The walk stops at the first point below the level: a later recovery (125 at 0.88) does not count.
    assert iso_budget([(125, 0.88), (1000, 0.90), (500, 0.89), (250, 0.85)], 0.87).value == pytest.approx(expected)


def test_iso_budget_bound_and_not_reached_are_never_extrapolated():
    bounded = iso_budget([(1000, 0.90), (500, 0.89), (250, 0.88)], 0.87)
    assert (bounded.state, bounded.value, bounded.low, bounded.high) == ("bounded", 250, 0.0, 250)
    missed = iso_budget([(1000, 0.86), (500, 0.89)], 0.87)
    assert (missed.state, missed.value, missed.low, missed.high) == ("not reached", 1000, 1000, math.inf)
    assert iso_budget([(1000, 0.87), (500, 0.80)], 0.87).state == "reached"  # at the level counts as within


def test_vectorised_iso_agrees_with_the_scalar_rule():
    rng = np.random.default_rng(1)
    xs = [1000.0, 400.0, 150.0, 60.0]
    means = rng.uniform(0.80, 0.90, size=(300, 4))
    levels = rng.uniform(0.78, 0.92, size=300)
    low, high = iso_arrays(xs, means, levels)
    for b in range(300):
        iso = iso_budget(list(zip(xs, means[b], strict=True)), levels[b])
        assert (low[b], high[b]) == pytest.approx((iso.low, iso.high))


def test_bootstrap_interval_covers_a_known_ratio():
    """200 simulated experiments of 20 seeds: the true curve is linear in log budget, so the true iso budget
    and ratio are known; the 95% percentile interval must cover the ratio in roughly 95% of them."""
    rng = np.random.default_rng(123)
    xs = [1000 * 2.0**-i for i in range(6)]
    true = [0.90 + 0.01 * math.log2(x / 1000) for x in xs]  # 90% .. 85%
    tol, sigma, ref_x = 0.025, 0.01, 10_000.0
    true_ratio = ref_x / (1000 * 2**-2.5)  # A = 0.875 is crossed at log2(x / 1000) = -2.5
    hits = []
    for e in range(200):
        samples = [rng.normal(0.90, sigma, 20), *(rng.normal(m, sigma, 20) for m in true)]
        boot = resample_means(samples, seed=e)
        low, high = iso_arrays(xs, boot[1:].T, boot[0] - tol)
        ci = percentile_interval(*ratio_bounds((ref_x, ref_x), (low, high)))
        hits.append(ci.low <= true_ratio <= ci.high)
    assert 0.88 <= np.mean(hits) <= 0.99


# --------------------------------------------------------------------------- ratios and verdicts


def log_interp(x_hi: float, x_lo: float, t: float) -> float:
    return math.exp(math.log(x_hi) + t * (math.log(x_lo) - math.log(x_hi)))


def test_ratios_against_dense_best_pruned_and_versus_on_hand_made_runs():
    _, t = analyse(frontier_runs())
    assert [s.label for s in t.series] == ["fcl / magnitude", "fcl / obd", "sgmoe / obd", "ptsne_moe / obd"]
    # Reference: both unpruned fcl configurations, pooled by seed (3 seeds, not 6).
    assert len(t.reference.groups) == 2 and sorted(t.reference.val) == ["0", "1", "2"]
    assert t.level == pytest.approx(0.885)
    ptsne_iso = log_interp(16663, 8332, 1 / 6)  # between 16,663 (88.6%) and 8,332 (88.0%): (88.6 - 88.5) / 0.6
    fcl_iso = log_interp(66652, 33326, 0.75)  # between 66,652 (88.8%) and 33,326 (88.4%)
    sgmoe_iso = log_interp(133305, 66652, 2 / 3)  # between 133,305 (88.7%) and 66,652 (88.4%)
    expected = {
        ("dense", "params/nonzero"): 266610 / ptsne_iso,
        ("pruned", "params/nonzero"): fcl_iso / ptsne_iso,
        ("versus", "params/nonzero"): sgmoe_iso / ptsne_iso,
        ("dense", "params/active_per_sample"): 266610 / (0.5 * ptsne_iso),  # the mixtures: half active
        ("pruned", "params/active_per_sample"): fcl_iso / (0.5 * ptsne_iso),
        ("versus", "params/active_per_sample"): sgmoe_iso / ptsne_iso,
    }
    got = {(r.kind, r.x): r for r in t.ratios}
    assert set(got) == set(expected)
    for k, value in expected.items():
        r = got[k]
        assert r.value == pytest.approx(value, rel=1e-6), k
        assert r.interval.low < value < r.interval.high and r.interval.low > 1, k
        assert r.status == "supported", (k, r.reason)
    b = got[("pruned", "params/nonzero")]
    assert b.other.label == "fcl / magnitude" and b.proposed.label == "ptsne_moe / obd"
    assert b.reason.startswith(
        "iso-accuracy on validation accuracy within 0.5 points of the dense fcl's 89.00%, on nonzero parameters: "
        f"ptsne_moe / obd needs {ptsne_iso:,.0f} vs fcl / magnitude {fcl_iso:,.0f}: {fcl_iso / ptsne_iso:.2f}x ["
    )
    assert "test accuracy at the chosen budgets: ptsne_moe / obd at 16,663: 88.40% [" in b.reason
    # Same runs, same interval: the bootstrap's RNG is seeded.
    _, again = analyse(frontier_runs())
    assert again.ratios[1].interval == b.interval


def test_a_ratio_whose_interval_includes_one_is_not_supported():
    close = [a - 0.0005 for a in FCL]  # the proposed model's curve just under the pruned fcl's
    _, t = analyse(frontier_runs(ptsne=close, noise=(-0.004, 0.0, 0.004)))
    b = t.ratio("pruned")
    assert b.value is not None and b.value < 1.1 and b.interval.low <= 1 <= b.interval.high
    assert b.status == "not supported" and b.reason.endswith("the interval includes 1")


def test_a_bound_decides_only_when_its_interval_is_on_one_side_of_1_and_single_seeds_never():
    flat = [0.889] * 6  # within tolerance down to the smallest budget: the iso budget is only bounded
    report, t = analyse(frontier_runs(ptsne=flat))
    assert "compression ratio of >= 32.00x (only bounded) over the dense fcl" in report.findings[0].sentence
    a = t.ratio("dense")
    assert a.value is None and a.low == pytest.approx(266610 / 8332) and math.isinf(a.high)
    assert "ptsne_moe / obd stays within tolerance down to its smallest budget (8,332)" in a.reason
    # At least 32x, and every replicate's range is above 1 too: the bound decides the claim.
    assert a.status == "supported" and "only known as >= 32.00x [32.00, inf]: the whole interval is above 1" in a.reason
    # Turned around (sgmoe proposed, against a ptsne_moe that stays accurate down to 8,332): the ratio is at
    # most 8,332 / sgmoe's iso budget, below 1 in every replicate: the bound refutes the claim.
    roles = Roles(proposed=Role.parse("sgmoe"), versus=Role.parse("ptsne_moe"))
    _, turned = analyse(frontier_runs(ptsne=flat), roles=roles)
    c = turned.ratio("versus")
    assert c.status == "not supported" and c.high < 1 and "the whole interval is below 1" in c.reason
    _, single = analyse(frontier_runs(noise=(0.0,)))
    assert all(r.status == "not measurable" and "fewer than 2 seeds" in r.reason for r in single.ratios)


def test_without_an_unpruned_dense_run_there_is_no_reference_and_no_ratio():
    runs = [
        r for r in frontier_runs() if not (r.get("model") == "fcl" and r.get("params.prune.target_nonzero") == "266610")
    ]
    _, t = analyse(runs)
    assert t.applies and t.reference is None and len(t.ratios) == 6  # a pruned fcl is never the reference
    assert all(r.status == "not measurable" for r in t.ratios)
    assert t.ratios[0].reason.startswith("no unpruned fcl configuration with val/acc to be the reference")


def test_roles_come_from_the_options():
    roles = Roles(proposed=Role.parse("sgmoe"), versus=Role.parse("ptsne_moe"))
    _, t = analyse(frontier_runs(), roles=roles)
    c = t.ratio("versus")
    assert c.proposed.label == "sgmoe / obd" and c.other.label == "ptsne_moe / obd"
    assert c.status == "not supported" and c.value < 1


def test_matched_budgets_pair_seeds_and_the_headline_is_chosen_on_validation():
    _, t = analyse(frontier_runs())
    pairs = [(m.p.group.label, m.o.group.label) for m in t.matched]
    assert ("ptsne_moe / obd / target_nonzero=16663", "sgmoe / obd / target_nonzero=16663") in pairs
    assert all(m.p.group.prune == m.o.group.prune for m in t.matched)  # same method, same budget
    headline = dict(t.headlines)["sgmoe"]
    # The smallest budget at which the proposed series' val/acc is still >= A (88.5%): 16,663 (88.6%).
    assert headline.p.budget == (("params.prune.target_nonzero", "16663"),)
    assert headline.test.summary.mean == pytest.approx(100 * (0.886 - 0.870)) and headline.test.n == 3


def test_no_budgets_no_section():
    runs = series("fcl", "none", [0.89], budgets=(266610,)) + series("ptsne_moe", "obd", [0.88], budgets=(50000,))
    report, t = analyse(runs)
    assert not t.applies and t.ratios == []
    assert json.loads(_json(report))["tradeoffs"] == []


def test_cli_report_on_a_budget_sweep_writes_the_section_plots_and_logs_the_ratios(run_cli, tmp_path):
    """The real CLI on an MLflow store holding the hand-made sweep: JSON on stdout, plots, a report run."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("frontier", artifact_location=str(tmp_path / "mlruns"))
    for i, r in enumerate(frontier_runs()):
        rid = client.create_run(exp, tags=dict(r.tags), start_time=1000 + i).info.run_id
        client.log_batch(
            rid,
            metrics=[Metric(k, v, 0, 0) for k, v in r.metrics.items()],
            params=[Param(k, v) for k, v in r.params.items()],
        )
        client.set_terminated(rid, "FINISHED")
    proc = run_cli("report", "-e", "frontier", "--tolerance", "0.5", "--format", "json", "--log-run")
    (t,) = json.loads(proc.stdout)["tradeoffs"]
    _, expected = analyse(frontier_runs())
    got = {(r["kind"], r["x"]): r for r in t["iso_ratios"]}
    for r in expected.ratios:  # the CLI reads back what was logged: the same ratios and intervals
        assert got[(r.kind, r.x)]["ratio"] == pytest.approx(r.value) and got[(r.kind, r.x)]["status"] == r.status
        assert got[(r.kind, r.x)]["ci95_low"] == pytest.approx(r.interval.low)
    plots = tmp_path / "reports" / "frontier"
    assert {p.name for p in plots.glob("tradeoff_*.png")} == {
        "tradeoff_nonzero.png", "tradeoff_active.png", "tradeoff_flops.png", "tradeoff_latency_b1.png"
    }  # fmt: skip
    runs = search_runs(tmp_path, "frontier")
    report_run = runs[runs["tags.run_type"] == "report"].iloc[0]
    assert report_run["metrics.claims/iso_nonzero_vs_fcl"] == pytest.approx(expected.ratio("dense").value)
    artifacts = {f.path for f in client.list_artifacts(report_run["run_id"], "plots")}
    assert "plots/tradeoff_nonzero.png" in artifacts


def _json(report) -> str:
    from ssmoe_cli.report.render import to_json

    return to_json(report)


# --------------------------------------------------------------------------- rendering


def test_text_markdown_and_json_carry_the_section_and_the_sentence_names_its_reference():
    from rich.console import Console

    from ssmoe_cli.report.render import render
    from ssmoe_cli.report.terminal import print_rich

    report, _ = analyse(frontier_runs())
    (f,) = report.findings
    assert f.sentence.startswith("This model (ptsne_moe) achieves a compression ratio of 17.96x (95% CI ")
    assert "validation accuracy stays within 0.5 points of the dense fcl's 89.00%" in f.sentence
    assert "against the best pruned fcl, fcl / magnitude: 2.67x" in f.sentence
    console = Console(width=80, record=True, color_system=None)
    print_rich(report, console)
    text = console.export_text()
    assert "Trade-off curves (all runs)" in text and "Pareto frontier" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    flat = " ".join(text.split())  # lines wrap at 80 columns
    assert "supported — iso-accuracy ratio vs the best pruned fcl on nonzero parameters: " in flat
    assert "vs sgmoe: ptsne_moe / obd and sgmoe / obd at target_nonzero=16663, 3 paired seed(s)" in flat
    md = render(report, "markdown")
    assert "## Trade-off curves (all runs)" in md and "| the best pruned fcl | nonzero parameters | 2.67x |" in md
    data = json.loads(render(report, "json"))
    (t,) = data["tradeoffs"]
    assert [s["label"] for s in t["series"]][-1] == "ptsne_moe / obd" and len(t["series"][-1]["points"]) == 6
    ratio = next(r for r in t["iso_ratios"] if r["kind"] == "dense" and r["x"] == "params/nonzero")
    assert ratio["status"] == "supported" and ratio["ratio"] == pytest.approx(17.96, abs=0.01)
    assert ratio["ci95_low"] < ratio["ratio"] < ratio["ci95_high"] and ratio["replicates"] == 2000
    assert ratio["proposed"]["iso_state"] == "reached" and t["reference"]["val_acc"]["n"] == 3
    assert t["pareto_on_val_acc"]["params/nonzero"][0] == "ptsne_moe / obd / target_nonzero=8332"
    assert {h["against"] for h in t["headlines"]} == {"pruned fcl", "sgmoe"}


def test_one_plot_per_cost_is_written_beside_the_report_plots(tmp_path):
    from ssmoe_cli.report.publish import claim_metrics, make_plots

    report, _ = analyse(frontier_runs())
    paths = make_plots(report, None, tmp_path)  # no gating maps to fetch: no MLflow client needed
    names = ["tradeoff_nonzero.png", "tradeoff_active.png", "tradeoff_flops.png", "tradeoff_latency_b1.png"]
    assert [p.name for p in paths] == ["accuracy_vs_nonzero.png", *names]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    metrics = claim_metrics(report)
    assert metrics["claims/iso_nonzero_vs_fcl"] == pytest.approx(report.tradeoffs[0].ratio("dense").value)
    assert metrics["claims/iso_active_vs_pruned_fcl_ci95_low"] > 1 and "claims/iso_nonzero_vs_sgmoe" in metrics
