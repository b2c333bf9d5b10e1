"""`experiment=frontier_quick` end to end through the real CLI: the CI-sized budget sweep (issue 11), every
job FINISHED at exactly its budget, then `ssmoe report` over it."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import composed, run_parallel, search_runs

MODELS = ("fcl", "sgmoe", "ptsne_moe")
METHODS = ("magnitude",)  # the suite's time: random pruning is tested in test_prune_budget.py
BUDGETS = (12653, 3163)  # 4x and 16x fewer nonzero than the digits FCL 64-300-100-10 (50,610)
SEEDS = (0, 1)


@pytest.mark.slow
def test_frontier_quick_reaches_every_budget_exactly_and_reports(run_cli, tmp_path, mlflow_db):
    proc = run_cli("train", "-m", "experiment=frontier_quick", timeout=600)
    jobs = len(MODELS) * len(METHODS) * len(BUDGETS) * len(SEEDS)
    assert f"sweep finished: {jobs} job(s), none failed" in proc.stdout, proc.stdout[-2000:]

    runs = search_runs(tmp_path, "frontier_quick")
    assert len(runs) == jobs and set(runs.status) == {"FINISHED"}
    keys = ["tags.model", "tags.prune", "params.prune.target_nonzero", "params.seed"]
    grid = set(runs[keys].itertuples(index=False, name=None))
    expected = itertools.product(MODELS, METHODS, map(str, BUDGETS), map(str, SEEDS))
    assert grid == set(expected)
    # The budget is the whole model's nonzero inference parameters, exactly, gate included.
    assert (runs["metrics.params/nonzero"] == runs["params.prune.target_nonzero"].astype(int)).all()
    assert set(runs["params.prune.targets"]) == {"['hidden', 'output', 'route', 'gate']"}
    assert set(runs["params.trainer.max_epochs"]) == {"6"} and set(runs["params.threads"]) == {"1"}
    moe = runs[runs["tags.model"] != "fcl"]
    assert (moe["metrics.params/active_per_sample"] < moe["metrics.params/nonzero"]).all()  # k of 8 experts

    # The dense reference: the unpruned FCL (frontier_method=none), one run per seed, beside the sweep.
    run_parallel(*[(tmp_path, ["train", "experiment=frontier_quick", "frontier_method=none", "model=fcl", f"seed={s}"])
                   for s in SEEDS])  # fmt: skip
    report = run_cli("report", "--experiment", "frontier_quick", "--format", "json", timeout=600)
    (tradeoff,) = json.loads(report.stdout)["tradeoffs"]
    assert tradeoff["reference"]["configurations"] == ["fcl / none"]  # the controls are the dense reference
    ratios = tradeoff["iso_ratios"]
    # (a) vs the dense FCL, (b) vs the best pruned FCL, (c) vs SGMoE, each on nonzero and active parameters.
    assert len(ratios) == 6
    assert all(r["status"] in ("supported", "not supported", "not measurable") and r["reason"] for r in ratios)
    report = run_cli("report", "--experiment", "frontier_quick", timeout=600)
    out = " ".join(report.stdout.split())  # the terminal wraps long lines
    configurations = len(MODELS) * len(METHODS) * len(BUDGETS) + 1  # + the dense reference
    assert f"{configurations} configuration(s) from {jobs + len(SEEDS)} run(s) in experiment(s) 'frontier_quick'" in out
    assert "Trade-off curves" in out and "Pareto frontier" in out and "Iso-accuracy ratios" in out
    for model, method in itertools.product(MODELS, METHODS):
        assert f"{model} / {method}" in out
    plots = {path.name for path in (tmp_path / "reports" / "frontier_quick").glob("*.png")}
    assert {"tradeoff_nonzero.png", "tradeoff_active.png", "tradeoff_flops.png"} <= plots


@pytest.mark.parametrize("method", ["magnitude", "obd", "random", "obs", "stochasticnet", "set", "rigl"])
def test_frontier_composes_every_method_with_its_schedule(method):
    job = composed("experiment=frontier", f"frontier_method={method}")
    prune = job["prune"]
    assert prune["_target_"].split(".")[-2] == method and prune["targets"] == ["hidden", "output", "route", "gate"]
    assert job["data"]["_target_"].endswith("FashionMNIST") and job["trainer"]["max_epochs"] == 6
    schedule = {key: prune.get(key) for key in ("schedule", "rounds", "start", "min_retrain")}
    if method in ("stochasticnet", "set", "rigl"):  # sparse before training: no pruning rounds, which they refuse
        assert set(schedule.values()) == {None}
    else:  # rounds after epochs 2, 3 and 4, then 2 of retraining: the 6 epochs
        assert schedule == {"schedule": "iterative", "rounds": 3, "start": 2, "min_retrain": 2}
        assert prune["every"] == 1 and prune["scope"] == "global"


@pytest.mark.parametrize(
    ("experiment", "data", "epochs", "rounds_at"),
    [("frontier_mnist1d", "MNIST1D", 30, (8, 4, 14)), ("frontier_letter", "LetterRecognition", 12, (3, 2, 5))],
)
def test_pair_frontiers_scale_the_schedule_to_their_epochs(experiment, data, epochs, rounds_at):
    job = composed(f"experiment={experiment}", "frontier_method=obd")
    prune = job["prune"]
    assert job["data"]["_target_"].endswith(data) and job["trainer"]["max_epochs"] == epochs
    assert (prune["start"], prune["every"], prune["min_retrain"]) == rounds_at
    assert prune["start"] + 2 * prune["every"] + prune["min_retrain"] == epochs  # the last round leaves its retraining
    assert job["arch"]["fcl_hidden"] == [100, 100] and job["baseline"]["hidden"] == [100, 100]  # arch=small


def test_frontier_sweeps_the_documented_grid():
    hydra = composed("experiment=frontier", hydra=True)
    assert hydra["sweeper"]["params"] == {
        "model": "fcl,sgmoe,ptsne_moe",
        "frontier_method": "magnitude,obd,stochasticnet,random,set,rigl,obs",
        "prune.target_nonzero": "266610,133305,66653,33326,16663,8332",
        "seed": "0,1,2",
    }
    launcher = hydra["launcher"]
    assert launcher["_target_"].startswith("hydra_plugins.hydra_joblib_launcher") and launcher["n_jobs"] == 2
