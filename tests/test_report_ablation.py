"""The routing ablation table of `ssmoe report` (issue 14): hand-made runs of five gates over three seeds
with known paired differences from ptsne; the verdicts follow validation accuracy, the sentence names
the ingredient that carries the effect; markdown, JSON and the terminal through the real CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import run_parallel

from ssmoe_cli import metrics as M
from ssmoe_cli.report.ablation import ablations
from ssmoe_cli.report.ablation_text import amend, markdown
from ssmoe_cli.report.build import build_report
from ssmoe_cli.report.records import RunRecord
from ssmoe_cli.report.render import render

T975_2 = 4.302652729911275  # t(0.975, df=2)
PTSNE_VAL = {0: 0.85, 1: 0.86, 2: 0.87}
# gate -> (val differences from ptsne per seed, test differences), in points.
DIFFS = {
    "ptsne": ([0, 0, 0], [0, 0, 0]),
    "pca_map": ([-0.4, -0.5, -0.6], [-0.2, -0.3, -0.1]),  # ptsne better on validation: the objective matters
    "input_kmeans": ([0.1, -0.3, 0.2], [-1.0, -1.1, -1.2]),  # test says worse, validation decides: not shown
    "noisy_topk": ([1.0, 1.1, 1.2], [0.9, 1.0, 1.1]),  # the field's router is better
}


def runs(diffs: dict = DIFFS, data: str = "fashion_mnist") -> list[RunRecord]:
    out = []
    for gate, (val, test) in diffs.items():
        for seed, (dv, dt) in enumerate(zip(val, test, strict=True)):
            metrics = {
                M.VAL_ACC: PTSNE_VAL[seed] + dv / 100,
                M.TEST_ACC: PTSNE_VAL[seed] - 0.01 + dt / 100,
                M.DEAD_EXPERTS: 1.0 if gate == "noisy_topk" else 0.0,
                M.MAX_VIO: 0.5 + seed / 10,
                M.LOAD_CV2: 0.08,
            }
            if gate in ("ptsne", "pca_map"):  # gates with a 2-D map
                metrics[M.GATE_TRUSTWORTHINESS] = 0.95
                metrics[M.GATE_KNN1_ACC] = 0.6
            tags = {"model": "ptsne_moe", "prune": "magnitude", "gating": gate, "data": data}
            rid = f"{data}-{gate}-{seed}"
            out.append(RunRecord(rid, tags=tags, params={"seed": str(seed)}, metrics=metrics, start_time=len(out)))
    # A gate with a single seed: no interval, not measurable.
    tags = {"model": "ptsne_moe", "prune": "magnitude", "gating": "lsh", "data": data}
    out.append(RunRecord(f"{data}-lsh-0", tags=tags, params={"seed": "0"}, metrics={M.VAL_ACC: 0.8, M.TEST_ACC: 0.8}))
    return out


def test_each_gate_is_paired_with_ptsne_by_seed_and_judged_on_validation():
    report = build_report(runs())
    (ab,) = ablations(report.groups, report.keys, report.names)
    by_gate = {r.gate: r for r in ab.rows}
    assert [r.gate for r in ab.rows][0] == "ptsne" and set(by_gate) == {*DIFFS, "lsh"}
    half = T975_2 * 0.1 / math.sqrt(3)  # std of -0.4, -0.5, -0.6 is 0.1
    pca = by_gate["pca_map"]
    assert pca.val.seeds == ("0", "1", "2")
    assert pca.val.summary.mean == pytest.approx(-0.5)
    assert (pca.val.summary.ci_low, pca.val.summary.ci_high) == pytest.approx((-0.5 - half, -0.5 + half))
    assert pca.test.summary.mean == pytest.approx(-0.2)
    assert pca.status == "supported" and pca.short == "ptsne is better: the t-SNE objective matters"
    assert pca.verdict.startswith("pca_map vs ptsne: -0.50 [-0.75, -0.25] points (validation")
    # Significantly worse on test, not on validation: validation decides.
    km = by_gate["input_kmeans"]
    assert km.test.summary.ci_high < 0 and km.status == "not supported"
    assert km.short == "the 2-D map is not shown to matter"
    topk = by_gate["noisy_topk"]
    assert (
        topk.status == "not supported" and topk.short == "noisy_topk is better: noisy top-k (Shazeer 2017) beats ptsne"
    )
    assert by_gate["lsh"].status == "not measurable" and by_gate["lsh"].val.n == 1
    assert ab.sentence == (
        "The paper's gate owes its effect to the t-SNE objective (the control without it is worse); "
        "of the other routers ptsne beats none and loses to noisy_topk; not measurable: lsh "
        "(validation accuracy, paired 95% intervals)."
    )


def test_the_table_shows_accuracy_intervals_differences_and_diagnostics():
    report = build_report(runs())
    (ab,) = ablations(report.groups, report.keys, report.names)
    text = markdown([ab])
    lines: dict[str, str] = {}  # each gate's row of the first (accuracy) table
    for line in text.splitlines():
        if line.startswith("| "):
            lines.setdefault(line.split(" | ")[0].strip("| "), line)
    # ptsne: val 85, 86, 87% -> 86.00 ± 4.30 * 1 / sqrt(3).
    half = T975_2 / math.sqrt(3)
    assert f"86.00 [{86 - half:.2f}, {86 + half:.2f}]" in lines["ptsne"] and "reference" in lines["ptsne"]
    assert "-0.50 [-0.75, -0.25]" in lines["pca_map"] and "-0.20 [" in lines["pca_map"]
    assert "+0.00 [" in lines["input_kmeans"] and "not shown to matter" in lines["input_kmeans"]
    assert "-5.00 (1 seed)" in lines["lsh"] and "no interval" in lines["lsh"]
    # Diagnostics: mean over seeds; T(12) only where the gate has a map.
    diag = [line for line in text.splitlines() if line.startswith("| noisy_topk |") and "—" in line]
    assert diag and "| 1.0 | 0.60 | 0.080 |" in diag[-1]
    assert "| 0.950 | 0.600 |" in [line for line in text.splitlines() if line.startswith("| pca_map |")][-1]
    assert "- **supported** (the t-SNE objective matters) — pca_map vs ptsne" in text


def test_the_sentence_claims_nothing_from_gates_without_an_interval():
    single = build_report([r for r in runs() if r.seed == "0"])
    (ab,) = ablations(single.groups, single.keys, single.names)
    assert {r.status for r in ab.rows[1:]} == {"not measurable"}
    assert ab.sentence == (
        "Not measurable: lsh, pca_map, input_kmeans, noisy_topk (validation accuracy, paired 95% intervals)."
    )
    no_effect = {g: ([0.1, -0.1, 0.05], [0.0, 0.0, 0.0]) for g in ("ptsne", "input_kmeans", "noisy_topk")}
    report = build_report([r for r in runs(no_effect) if r.tags["gating"] != "lsh"])
    (ab,) = ablations(report.groups, report.keys, report.names)
    assert ab.sentence == (
        "No ingredient of the paper's gate is shown to carry an effect (no control is worse than ptsne); "
        "ptsne is not shown to differ from the other routers (noisy_topk) (validation accuracy, paired 95% intervals)."
    )


def test_no_ablation_without_ptsne_or_without_a_gating_sweep():
    no_ref = {k: v for k, v in DIFFS.items() if k != "ptsne"}
    report = build_report(runs(no_ref))
    assert ablations(report.groups, report.keys, report.names) == []
    one_gate = build_report([r for r in runs() if r.tags["gating"] == "ptsne"])
    assert ablations(one_gate.groups, one_gate.keys, one_gate.names) == []
    md = render(report, "markdown")
    assert amend(md, "markdown", []) == md


def test_the_better_map_gate_is_the_reference_where_present_and_ptsne_its_control():
    # experiment=ablation_routing_map: ptsne_knn (the better map) is the reference, ptsne (the batch map)
    # and ptsne_knn_random are controls of it; the runs' ptsne values above now belong to ptsne_knn.
    diffs = {
        "ptsne_knn": ([0, 0, 0], [0, 0, 0]),
        "ptsne": ([-0.4, -0.5, -0.6], [-0.2, -0.3, -0.1]),  # the better map is better on validation
        "ptsne_knn_random": ([0.1, -0.3, 0.2], [0.0, 0.0, 0.0]),
        "noisy_topk": ([1.0, 1.1, 1.2], [0.9, 1.0, 1.1]),
    }
    report = build_report([r for r in runs(diffs) if r.tags["gating"] != "lsh"])
    (ab,) = ablations(report.groups, report.keys, report.names)
    by_gate = {r.gate: r for r in ab.rows}
    assert ab.reference == "ptsne_knn" and ab.rows[0].short == "reference"
    assert by_gate["ptsne"].claim == "the better map (whole-set kNN objective, larger f) matters"
    assert by_gate["ptsne"].status == "supported"
    assert by_gate["ptsne"].verdict.startswith("ptsne vs ptsne_knn: -0.50 [-0.75, -0.25] points (validation")
    assert by_gate["ptsne_knn_random"].short == "the k-means placement of the centres is not shown to matter"
    assert by_gate["noisy_topk"].short == "noisy_topk is better: noisy top-k (Shazeer 2017) beats ptsne_knn"
    assert (
        ab.sentence.startswith("The paper's gate owes its effect to the better map (whole-set kNN objective, larger f)")
        and "of the other routers ptsne_knn beats none and loses to noisy_topk" in ab.sentence
    )
    text = markdown([ab])
    assert "## Routing ablation: each gate vs ptsne_knn" in text and "| Δ val vs ptsne_knn |" in text
    assert "Δ: gate − ptsne_knn in points" in text


def test_each_data_set_gets_its_own_ablation_and_formats_carry_it(tmp_path):
    report = build_report([*runs(data="fashion_mnist"), *runs(data="mnist")])
    found = ablations(report.groups, report.keys, report.names)
    shared = "model=ptsne_moe, prune=magnitude"
    assert [a.context for a in found] == [f"{shared}, data=fashion_mnist", f"{shared}, data=mnist"]
    data = json.loads(amend(render(report, "json", tmp_path), "json", found))
    gates = {g["gate"]: g for g in data["ablations"][0]["gates"]}
    assert gates["pca_map"]["val_acc_diff_points"]["mean"] == pytest.approx(-0.5)
    assert gates["pca_map"]["status"] == "supported" and data["groups"]  # the rest of the report is kept
    html = amend(render(report, "html", tmp_path), "html", found)
    assert html.index("Routing ablation") < html.index("</body></html>")


def _store(root: Path) -> str:
    """The runs() of one data set as FINISHED training runs of experiment ablation_routing."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ablation_routing", artifact_location=str(root / "mlruns"))
    for i, r in enumerate(runs()):
        run = client.create_run(exp, tags={"run_type": "train", **r.tags, "seed": r.seed}, start_time=1000 * (i + 1))
        client.log_param(run.info.run_id, "seed", r.seed)
        for key, value in r.metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED")
    return uri


def test_ssmoe_report_prints_and_writes_the_ablation(tmp_path, store_template):
    shutil.copyfile(store_template, tmp_path / "mlflow.db")
    _store(tmp_path)
    base = ["report", "-e", "ablation_routing", "--plots-dir", "plots"]
    md, term = run_parallel(
        (tmp_path, [*base, "--format", "markdown", "-o", "report.md", "--log-run"]),
        (tmp_path, [*base]),
    )
    text = (tmp_path / "report.md").read_text()
    assert "## Routing ablation: each gate vs ptsne" in text
    assert text.index("## Routing ablation") < text.index("## Notes")
    assert "The paper's gate owes its effect to the t-SNE objective" in text
    assert "Routing ablation: each gate vs ptsne" in term.stdout
    assert "ptsne is better: the t-SNE objective matters" in " ".join(term.stdout.split())
    from mlflow.tracking import MlflowClient  # the report run carries the ablation beside its report.md

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ablation_routing")
    (report_run,) = client.search_runs([exp.experiment_id], "tags.run_type = 'report'")
    assert {"report.md", "ablation.md"} <= {f.path for f in client.list_artifacts(report_run.info.run_id)}
    got = Path(client.download_artifacts(report_run.info.run_id, "ablation.md", str(tmp_path / "got")))
    assert got.read_text().strip() == text[text.index("## Routing ablation") : text.index("## Notes")].strip()


def test_the_ablation_sweeps_every_gate_on_the_same_experts_within_one_reachable_budget(one_thread):
    """experiment=ablation_routing: each swept gate exists and composes on Fashion-MNIST's sizes with
    the paper's experts (8 x 784-64-10, k = 2), isolated, and leaves room in the budget for the weights that
    are not pruned (biases, buffers such as fixed hash directions or k-means centres)."""
    from importlib.resources import files

    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from ssmoe_cli.models.accounting import inference_tensors
    from ssmoe_cli.models.topology.isolated import Isolated
    from ssmoe_cli.prune.masks import target_layers

    def composed(*overrides: str):
        with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
            return compose("train", overrides=["experiment=ablation_routing", *overrides], return_hydra_config=True)

    sweep = composed().hydra.sweeper.params
    gates = sweep.gating.split(",")
    assert gates[0] == "ptsne" and len(gates) == len(set(gates)) == 8 and sweep.seed == "0,1,2"
    missing = [g for g in gates if not files("ssmoe_cli.conf").joinpath("gating", f"{g}.yaml").is_file()]
    assert not missing, f"the sweep names gates without a conf/gating/ file: {missing}"
    for gate in gates:
        cfg = composed(f"gating={gate}")
        assert cfg.data._target_.endswith("FashionMNIST") and cfg.prune.target_nonzero == 33326
        model = instantiate(cfg.model, in_features=784, num_classes=10)
        assert (model.num_experts, model.k, model.layers[0].out_features) == (8, 2, 64), gate
        assert isinstance(model.topology, Isolated), gate
        targeted = {id(m.weight) for m in target_layers(model, cfg.prune.targets).values()}
        fixed = sum(t.numel() for t in inference_tensors(model) if id(t) not in targeted)
        assert fixed < cfg.prune.target_nonzero / 2, (gate, fixed)  # the experts keep most of the budget
