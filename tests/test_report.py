"""`ssmoe report` on hand-made MLflow runs: statistics checked by hand, the paper's blanks, formats, plots.

One SQLite store per module (creating one costs seconds); the CLI runs through `python -m ssmoe_cli`
in a subprocess for the end-to-end cases, the rest calls the report's functions directly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

from ssmoe_cli.report import claims, intervals
from ssmoe_cli.report.build import Report, build_report
from ssmoe_cli.report.intervals import summarize
from ssmoe_cli.report.records import Group, RunRecord
from ssmoe_cli.report.render import render

FCL_NONZERO = 266_610.0
T975_2 = 4.302652729911275  # t(0.975, df=2)
T975_1 = 12.706204736174705  # t(0.975, df=1)

# (model, prune, target_sparsity, seed, test/acc, params/nonzero, status); other metrics derived below.
RUNS = [
    ("fcl", "none", None, 0, 0.80, FCL_NONZERO, "FINISHED"),
    ("fcl", "none", None, 1, 0.82, FCL_NONZERO, "FINISHED"),
    ("fcl", "none", None, 2, 0.84, FCL_NONZERO, "FINISHED"),
    ("ptsne_moe", "none", None, 0, 0.83, 800_000.0, "FINISHED"),
    ("ptsne_moe", "none", None, 1, 0.85, 800_000.0, "FINISHED"),
    # Within 1 point of the FCL's 82.00% (mean 81.67%) and the smallest such: blank 1's choice.
    ("ptsne_moe", "magnitude", "0.9", 0, 0.815, 33_000.0, "FINISHED"),
    ("ptsne_moe", "magnitude", "0.9", 1, 0.815, 33_000.0, "FINISHED"),
    ("ptsne_moe", "magnitude", "0.9", 2, 0.820, 33_000.0, "FINISHED"),
    ("ptsne_moe", "magnitude", "0.9", 5, 0.100, 33_000.0, "FAILED"),
    # Smaller still, but 3.5 points below the FCL: never chosen.
    ("ptsne_moe", "magnitude", "0.95", 0, 0.78, 20_000.0, "FINISHED"),
    ("ptsne_moe", "magnitude", "0.95", 1, 0.79, 20_000.0, "FINISHED"),
    # Seeds 1, 2, 3 against ptsne's 0, 1, 2: only seeds 1 and 2 pair.
    ("sgmoe", "magnitude", "0.9", 1, 0.80, 35_000.0, "FINISHED"),
    ("sgmoe", "magnitude", "0.9", 2, 0.81, 35_000.0, "FINISHED"),
    ("sgmoe", "magnitude", "0.9", 3, 0.79, 35_000.0, "FINISHED"),
    # One seed each: no CI anywhere (and 3 points below the FCL).
    ("ptsne_moe", "obd", "0.9", 0, 0.79, 30_000.0, "FINISHED"),
    ("sgmoe", "obd", "0.9", 0, 0.78, 31_000.0, "FINISHED"),
]
GATING = {"ptsne_moe": ("ptsne", "small_world"), "sgmoe": ("noisy_topk", "isolated")}


def _make_store(root: Path, experiment: str = "ssmoe") -> str:
    """Log RUNS into root/mlflow.db (artifacts under root), with one gating-map artifact."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(experiment, artifact_location=str(root / "mlruns"))
    png = root / "gating_map.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")  # a stand-in: the report only copies it
    for i, (model, prune, sparsity, seed, acc, nonzero, status) in enumerate(RUNS):
        tags = {"run_type": "train", "model": model, "prune": prune, "data": "synthetic", "seed": str(seed)}
        if model in GATING:
            tags["gating"], tags["topology"] = GATING[model]
        run = client.create_run(exp, tags=tags, start_time=1_000 * (i + 1))
        rid = run.info.run_id
        client.log_param(rid, "seed", seed)
        if sparsity is not None:
            client.log_param(rid, "prune.target_sparsity", sparsity)
        metrics = {
            "val/acc": acc,  # configurations are chosen on validation accuracy (report/selection.py)
            "test/acc": acc,
            "params/nonzero": nonzero,
            "params/active_per_sample": nonzero / 2,
            "compression/ratio_vs_fcl": FCL_NONZERO / nonzero,
            "compression/bytes_ratio_vs_fcl": FCL_NONZERO / nonzero / 1.5,
            "time/epoch_s": 1.0 + seed / 10,
            "time/infer_ms_b256": 2.0,
        }
        if model == "ptsne_moe":  # a gate with a 2-D map logs these, and a gating-map artifact
            metrics["gate/tsne_kl"] = 0.5
        if model != "fcl":
            metrics["experts/load_cv2"] = 0.1 + seed / 100
            metrics["experts/load_max_over_mean"] = 1.5
            # experts/output_corr is missing in one run of the chosen group: a partial cell.
            if not (model == "ptsne_moe" and prune == "magnitude" and sparsity == "0.9" and seed == 2):
                metrics["experts/output_corr"] = 0.3
        for key, value in metrics.items():
            client.log_metric(rid, key, value)
        if status == "FAILED":
            client.set_tag(rid, "error", "RuntimeError: diverged")
        if model == "ptsne_moe" and seed == 0:
            client.log_artifact(rid, str(png), "plots")
        client.set_terminated(rid, status)
    # An experiment with only FCL runs (one of them a single seed) and one with only a failed run.
    only = client.create_experiment("only_fcl", artifact_location=str(root / "mlruns_fcl"))
    for seed, acc in ((0, 0.8), (1, 0.81)):
        run = client.create_run(only, tags={"run_type": "train", "model": "fcl", "prune": "none"})
        client.log_param(run.info.run_id, "seed", seed)
        client.log_metric(run.info.run_id, "test/acc", acc)
        client.set_terminated(run.info.run_id, "FINISHED")
    failed = client.create_experiment("all_failed", artifact_location=str(root / "mlruns_failed"))
    run = client.create_run(failed, tags={"run_type": "train", "model": "fcl", "prune": "none"})
    client.set_terminated(run.info.run_id, "FAILED")
    return uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_store")
    _make_store(root)
    return root


@pytest.fixture
def workdir(store: Path, tmp_path: Path) -> Path:
    """A working directory holding a copy of the store as ./mlflow.db (the `ssmoe train` default)."""
    shutil.copyfile(store / "mlflow.db", tmp_path / "mlflow.db")
    return tmp_path


def report_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = cli_env(cwd)
    env["COLUMNS"] = "250"  # wide enough that rich does not wrap the cells the tests look for
    return subprocess.run(
        [sys.executable, "-m", "ssmoe_cli", "report", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def load(store: Path, experiment: str = "ssmoe") -> Report:
    from ssmoe_cli.report import query

    client, uri = query.open_client(f"sqlite:///{store / 'mlflow.db'}")
    finished, others = query.fetch_train_runs(client, query.find_experiments(client, [experiment], uri))
    return build_report(finished, tracking_uri=uri, experiments=[experiment], excluded=others)


def group(report: Report, label: str) -> Group:
    return next(g for g in report.groups if g.label == label)


# --------------------------------------------------------------------------- pure statistics


def test_t_quantile_known_values_with_and_without_scipy():
    for fn in (intervals.t_quantile, intervals.t_quantile_fallback):
        assert fn(0.975, 1) == pytest.approx(12.706, abs=1e-3)
        assert fn(0.975, 2) == pytest.approx(4.303, abs=1e-3)
        assert fn(0.975, 4) == pytest.approx(2.776, abs=1e-3)
        assert fn(0.975, 30) == pytest.approx(2.042, abs=1e-3)
        assert fn(0.975, 1e6) == pytest.approx(1.960, abs=1e-3)
        assert fn(0.025, 4) == pytest.approx(-2.776, abs=1e-3)


def test_summary_mean_sample_std_and_ci_by_hand():
    s = summarize([0.80, 0.82, 0.84])
    assert s.n == 3 and s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)
    assert s.half_width == pytest.approx(T975_2 * 0.02 / math.sqrt(3))
    assert s.ci_low == pytest.approx(0.82 - T975_2 * 0.02 / math.sqrt(3))
    single = summarize([0.81])
    assert single.n == 1 and single.mean == 0.81 and single.std is None and single.ci_low is None
    assert summarize([]).n == 0 and summarize([]).mean is None
    assert summarize([1.0, float("nan")]).n == 1  # NaN is a missing value, not a sample


def test_pairing_uses_common_seeds_only():
    p = intervals.paired_differences({"0": 0.815, "1": 0.815, "2": 0.82}, {"1": 0.80, "2": 0.81, "3": 0.79}, scale=100)
    assert p.seeds == ("1", "2") and p.diffs == pytest.approx((1.5, 1.0))
    assert p.summary.mean == pytest.approx(1.25)
    assert p.summary.std == pytest.approx(math.sqrt(0.125))
    assert p.summary.half_width == pytest.approx(T975_1 * math.sqrt(0.125) / math.sqrt(2))
    assert intervals.paired_differences({"0": 1.0}, {"1": 1.0}).n == 0


def test_repeated_seed_counts_once():
    runs = [
        RunRecord(
            "a", start_time=1, tags={"model": "fcl", "prune": "none"}, params={"seed": "0"}, metrics={"test/acc": 0.5}
        ),
        RunRecord(
            "b", start_time=2, tags={"model": "fcl", "prune": "none"}, params={"seed": "0"}, metrics={"test/acc": 0.7}
        ),
    ]
    report = build_report(runs)
    (g,) = report.groups
    assert [r.run_id for r in g.runs] == ["b"] and [(s.run.run_id, s.kept.run_id) for s in g.set_aside] == [("a", "b")]
    assert any(n.startswith("set aside a: seed 0 of fcl / none again") for n in report.notes)


def _synthetic(model: str, prune: str, accs: list[float], nonzero: float, **tags: str) -> list[RunRecord]:
    return [
        RunRecord(
            f"{model}-{prune}-{'-'.join(tags.values())}-{seed}",
            tags={"model": model, "prune": prune, **tags},
            params={"seed": str(seed)},
            metrics={"val/acc": acc, "test/acc": acc, "params/nonzero": nonzero},
        )
        for seed, acc in enumerate(accs)
    ]


def test_blank1_unsupported_when_no_ptsne_within_tolerance():
    runs = _synthetic("fcl", "none", [0.90, 0.90], FCL_NONZERO) + _synthetic(
        "ptsne_moe", "magnitude", [0.85, 0.86], 1e4
    )
    (f,) = build_report(runs, tolerance=1.0).findings
    assert f.compression.claim.status == "not supported" and f.compression.percent is None
    assert "no ptsne_moe configuration within 1 point of the dense fcl" in f.compression.claim.reason
    assert "best: ptsne_moe / magnitude at 85.50%" in f.compression.claim.reason
    assert "compression ratio of ? over" in f.sentence
    # A looser tolerance admits it.
    (f,) = build_report(runs, tolerance=5.0).findings
    assert f.compression.claim.status == "supported"
    assert f.compression.percent == pytest.approx(100 * (1 - 1e4 / FCL_NONZERO))


def test_blank1_unsupported_when_ptsne_is_larger():
    runs = _synthetic("fcl", "none", [0.90, 0.91], FCL_NONZERO) + _synthetic("ptsne_moe", "none", [0.91, 0.92], 8e5)
    (f,) = build_report(runs).findings
    assert f.compression.claim.status == "not supported" and "no compression" in f.compression.claim.reason
    assert f.compression.percent is not None and f.compression.percent < 0


def test_only_fcl_runs_are_not_measurable():
    (f,) = build_report(_synthetic("fcl", "none", [0.9], FCL_NONZERO)).findings
    assert [c.status for c in f.claims] == ["not measurable"] * 5  # blank 1, then the headline pair's four
    assert "no ptsne_moe runs" in f.claims[0].reason and "no ptsne_moe and sgmoe runs" in f.claims[1].reason
    assert f.sentence.count("?") == 2


def test_blanks_per_data_set_and_gate_ablation_is_not_the_paper_model():
    runs = []
    for data in ("digits", "mnist"):
        runs += _synthetic("fcl", "none", [0.9, 0.9], FCL_NONZERO, data=data)
        runs += _synthetic("ptsne_moe", "magnitude", [0.9, 0.9], 2e4, data=data, gating="ptsne")
    # model=ptsne_moe gating=noisy_topk is an ablation: smaller and better, still never blank 1's choice.
    runs += _synthetic("ptsne_moe", "magnitude", [0.95, 0.95], 1e3, data="digits", gating="noisy_topk")
    report = build_report(runs)
    assert report.keys == ["model", "prune", "data", "gating"]  # gating varies within ptsne_moe runs
    assert [f.context_label for f in report.findings] == ["data=digits", "data=mnist"]
    for f in report.findings:
        assert f.compression.chosen is not None and f.compression.chosen.value("gating") == "ptsne"
        assert f.compression.percent == pytest.approx(100 * (1 - 2e4 / FCL_NONZERO))


def test_sgmoe_claims_definitions():
    two = intervals.paired_differences({"0": 0.9, "1": 0.91}, {"0": 0.8, "1": 0.82}, scale=100)  # +10, +9
    acc, size = claims._versus_claims(two, 1.2)
    assert acc.status == "supported" and size.status == "supported"
    worse = intervals.paired_differences({"0": 0.8, "1": 0.81}, {"0": 0.9, "1": 0.92}, scale=100)
    acc, size = claims._versus_claims(worse, 1.2)
    assert acc.status == "not supported" and size.status == "not supported" and "significantly worse" in size.reason
    noisy = intervals.paired_differences({"0": 0.9, "1": 0.8}, {"0": 0.85, "1": 0.84}, scale=100)
    acc, size = claims._versus_claims(noisy, 0.9)
    assert acc.status == "not supported" and "CI includes 0" in acc.reason
    assert size.status == "not supported" and "ptsne_moe has 1.11x more nonzero parameters than sgmoe" in size.reason
    one = intervals.paired_differences({"0": 0.9}, {"0": 0.85}, scale=100)
    acc, size = claims._versus_claims(one, 1.2)
    assert acc.status == "not measurable" and "single seed: no CI" in acc.reason
    assert size.status == "not measurable"


# --------------------------------------------------------------------------- hand-made MLflow runs


def test_groups_and_statistics_from_mlflow(store):
    report = load(store)
    assert report.keys == ["model", "prune", "params.prune.target_sparsity"]  # gating/topology only repeat model
    fcl = group(report, "fcl / none")
    acc = fcl.summary("test/acc")
    assert (acc.n, acc.mean, acc.std) == (3, pytest.approx(0.82), pytest.approx(0.02))
    assert acc.half_width == pytest.approx(T975_2 * 0.02 / math.sqrt(3))  # far from 0 and 1: not cut
    # The FAILED run (seed 5) is left out of the statistics, and said so.
    chosen = group(report, "ptsne_moe / magnitude / target_sparsity=0.9")
    assert chosen.seeds == ["0", "1", "2"]
    assert [r.status for r in report.excluded] == ["FAILED"]
    assert any("not FINISHED" in n for n in report.notes)
    # Missing metric in one run: n=2 of 3, and the cell says so.
    assert chosen.summary("experts/output_corr").n == 2
    assert any("experts/output_corr" in n for n in report.notes if n.startswith("missing in some"))
    # FCL has no expert metrics: a dash, not a crash.
    assert fcl.summary("experts/load_cv2").n == 0


def test_blanks_on_hand_made_runs(store):
    (f,) = load(store).findings
    c = f.compression
    assert c.reference is not None and c.reference.label == "fcl / none"
    assert c.chosen is not None and c.chosen.label == "ptsne_moe / magnitude / target_sparsity=0.9"
    assert c.percent == pytest.approx(100 * (1 - 33_000 / FCL_NONZERO))
    assert c.ratio == pytest.approx(FCL_NONZERO / 33_000)
    assert c.claim.status == "supported"
    # Blank 2's headline is blank 1's prune setting; seeds 1 and 2 pair: +1.5 and +1.0 points.
    m = f.versus.headline
    assert m is not None and m.other.label == "sgmoe / magnitude / target_sparsity=0.9"
    assert m.acc.seeds == ("1", "2") and m.acc.summary.mean == pytest.approx(1.25)
    assert m.acc.summary.half_width == pytest.approx(T975_1 * math.sqrt(0.125) / math.sqrt(2))
    assert m.nonzero_ratio == pytest.approx(35_000 / 33_000)
    assert m.ratio_diff == pytest.approx(FCL_NONZERO / 33_000 - FCL_NONZERO / 35_000)
    assert m.accuracy_claim.status == "not supported" and "CI includes 0" in m.accuracy_claim.reason
    assert m.compression_claim.status == "supported"
    # The obd pair has a single seed: no CI, said plainly.
    obd = next(x for x in f.versus.matches if x.proposed.prune == "obd")
    assert obd.acc.n == 1 and obd.acc.summary.ci_low is None
    assert obd.accuracy_claim.status == "not measurable" and "single seed: no CI" in obd.accuracy_claim.reason
    # 0.95 has no sgmoe counterpart: only two matches.
    assert len(f.versus.matches) == 2
    # target_sparsity takes two values in ptsne_moe / magnitude: a budget sweep, so the sentence comes from the
    # iso-accuracy ratios (report/frontier_ratios.py) and names its reference.
    assert "compression ratio of 8.98x (95% CI 0.00, 12.26) over the dense fcl network" in f.sentence
    assert "within 1 point of the dense fcl's 82.00%" in f.sentence


def test_formats_are_parseable(store):
    report = load(store)
    data = json.loads(render(report, "json"))
    assert data["findings"][0]["compression_vs_dense"]["chosen"] == "ptsne_moe / magnitude / target_sparsity=0.9"
    assert data["groups"][0]["metrics"]["test/acc"]["std"] == pytest.approx(0.02)
    assert data["groups"][0]["metrics"]["experts/load_cv2"] == {
        "n": 0,
        "mean": None,
        "std": None,
        "ci95_low": None,
        "ci95_high": None,
    }
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert rows[0]["model"] == "fcl" and float(rows[0]["test/acc:mean"]) == pytest.approx(0.82)
    assert rows[0]["experts/load_cv2:mean"] == ""
    md = render(report, "markdown")
    assert md.startswith("# ssmoe report") and "| model | prune |" in md
    assert "82.00 ± 2.00 [77.03, 86.97]" in md and "—" in md and "(n=2/3)" in md and "(1 seed: std/CI n/a)" in md
    page = render(report, "html")
    assert page.startswith("<!DOCTYPE html>") and page.count("<table") == 7 and "</html>" in page


# --------------------------------------------------------------------------- the CLI end to end


def test_cli_report_with_defaults_writes_plots_and_a_report_run_on_request(workdir):
    proc = report_cli(workdir, "-e", "ssmoe", "--include-failed", "--log-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ssmoe report: mean ± std over seeds" in out and "The paper's claims" in out
    assert "achieves a compression ratio of 8.98x" in out
    assert "supported" in out and "RuntimeError: diverged" in out  # --include-failed lists the failed run
    plots = workdir / "reports" / "ssmoe"
    names = {p.name for p in plots.glob("*.png")}
    assert {"accuracy_vs_nonzero.png", "expert_load.png"} <= names
    assert "gating_map_ptsne_moe_magnitude_target_sparsity-0.9.png" in names
    assert (plots / "accuracy_vs_nonzero.png").read_bytes()[:4] == b"\x89PNG"

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    reports = mlflow.search_runs(experiment_names=["ssmoe"], filter_string="tags.run_type = 'report'")
    assert len(reports) == 1 and reports.iloc[0].status == "FINISHED"
    assert reports.iloc[0]["metrics.claims/compression_pct_vs_fcl"] == pytest.approx(100 * (1 - 33_000 / FCL_NONZERO))
    client = mlflow.MlflowClient()
    rid = reports.iloc[0].run_id
    top = {a.path for a in client.list_artifacts(rid)}
    assert {"report.md", "report.json", "plots"} <= top
    assert "plots/accuracy_vs_nonzero.png" in {a.path for a in client.list_artifacts(rid, "plots")}
    # A second report reads the same training runs (the report run is never one of them) and, without
    # --log-run, logs nothing: still one report run. The old opt-out is still accepted.
    proc = report_cli(workdir, "-e", "ssmoe", "--format", "json", "--no-mlflow-run")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # nothing but JSON on stdout, a short note on stderr
    assert sum(g["runs"] for g in data["groups"]) == 15
    assert "mean ± std" not in proc.stderr and len(proc.stderr.splitlines()) <= 3
    reports = mlflow.search_runs(experiment_names=["ssmoe"], filter_string="tags.run_type = 'report'")
    assert len(reports) == 1


def test_cli_markdown_to_stdout_and_output_file(workdir):
    proc = report_cli(workdir, "--format", "markdown", "-e", "only_fcl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# ssmoe report") and "not measurable" in proc.stdout
    # stderr: a short note saying where the report went, never the tables again.
    assert proc.stderr.splitlines() == [
        f"1 configuration(s) from 2 run(s) in experiment(s) 'only_fcl' at sqlite:///{workdir / 'mlflow.db'}; "
        "markdown on stdout, 3 note(s) in it"  # what is not logged, and the two plots that had no data
    ]
    proc = report_cli(workdir, "-e", "ssmoe", "--output", "out/table.csv", "--plots-dir", "figs")
    assert proc.returncode == 0, proc.stderr
    header = (workdir / "out" / "table.csv").read_text().splitlines()[0]
    assert header.startswith("model,prune,target_sparsity,runs,seeds,test/acc:n")
    assert (workdir / "figs" / "accuracy_vs_nonzero.png").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-e", "nope"], 2, "ssmoe: error: no experiment named 'nope'"),
        (
            ["-e", "all_failed", "--include-failed"],
            1,
            "ssmoe: error: no finished training runs in experiment(s) 'all_failed'",
        ),
        (["--tolerance", "-1"], 2, "ssmoe: error: --tolerance must be >= 0 (see ssmoe report --help)"),
        (["--versus", "sgmoe:gating"], 2, "ssmoe: error: 'sgmoe:gating': expected MODEL[:KEY=VALUE,...]"),
    ],
)
def test_cli_clear_errors(workdir, args, code, message):
    proc = report_cli(workdir, *args)
    assert proc.returncode == code
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_without_experiment_reads_the_newest_finished_one_and_says_so(workdir):
    proc = report_cli(workdir, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["experiments"] == ["only_fcl"]  # all_failed is newer but has nothing to report
    note = proc.stderr.splitlines()[0]
    assert note.startswith("ssmoe report: reading experiment 'only_fcl' (the newest finished training run is there")
    assert "ssmoe" in note and "all_failed" in note  # the others, to choose with -e


def test_cli_corrupt_store_is_one_line(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"this is not a database\n" * 100)
    proc = report_cli(tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"ssmoe: error: cannot read the MLflow store at sqlite:///{tmp_path / 'mlflow.db'}")


def test_cli_missing_store_is_not_created(tmp_path):
    proc = report_cli(tmp_path)
    assert proc.returncode == 2 and "no MLflow store at" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
