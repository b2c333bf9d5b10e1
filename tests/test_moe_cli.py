"""Mixture-of-experts models, pruning and export through the real `ssmoe train` CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import FAST, run_parallel, search_runs

from ssmoe_cli.export import load_model

MOE_METRICS = ["experts/load_cv2", "experts/load_max_over_mean", "experts/output_corr", "gate/entropy"]
MAP_METRICS = ["gate/tsne_kl", "gate/trustworthiness", "gate/knn1_acc"]
SIZE_METRICS = ["prune/sparsity", "size/dense_bytes", "size/sparse_bytes", "compression/bytes_ratio_vs_fcl"]


def artifacts(run_id: str) -> set[str]:
    client = mlflow.MlflowClient()
    found = set()
    for top in client.list_artifacts(run_id):
        if top.is_dir:
            found |= {f.path for f in client.list_artifacts(run_id, top.path)}
        else:
            found.add(top.path)
    return found


def test_models_compose_and_gating_is_overridable(run_cli):
    out = run_cli("train", "--cfg", "job", "model=ptsne_moe", "gating=noisy_topk", "topology=random").stdout
    assert "NoisyTopKGate" in out and "ErdosRenyi" in out and "MixtureOfExperts" in out
    out = run_cli("train", "--cfg", "job", "model=fcl").stdout
    assert "gating:" not in out and "topology:" not in out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Path:
    """One folder, one store, three runs at once (one thread each): sgmoe and ptsne_moe on synthetic data
    (two runs, not one sweep over model: Hydra checks non-swept overrides against the base config,
    model=fcl, which has no num_experts) and a magnitude-pruned FCL on digits."""
    root = tmp_path_factory.mktemp("moe_cli")
    shutil.copyfile(store_template, root / "mlflow.db")
    small = ["data=synthetic", "model.num_experts=4", "model.expert_hidden=[16]", "threads=1", *FAST]
    pruned = ["model=fcl", "data=digits", "trainer.max_epochs=4", "prune=magnitude", "prune.start=1"]
    pruned += ["prune.every=1", "prune.rounds=2", "prune.min_retrain=1", "prune.target_sparsity=0.8", "threads=1"]
    pruned += [*FAST[1:], "trainer.enable_progress_bar=false"]
    run_parallel(
        (root, ["train", "model=sgmoe", *small]),
        (root, ["train", "model=ptsne_moe", "gating.pretrain_epochs=3", "gating.tsne_batch_size=200", *small]),
        (root, ["train", *pruned]),
    )
    return root


@pytest.mark.slow
def test_sgmoe_and_ptsne_moe_runs_log_gate_metrics_plots_and_export(trained):
    runs = search_runs(trained).set_index("tags.model")
    assert sorted(runs.index) == ["fcl", "ptsne_moe", "sgmoe"] and set(runs.status) == {"FINISHED"}
    for model in ("sgmoe", "ptsne_moe"):
        run = runs.loc[model]
        for key in MOE_METRICS + SIZE_METRICS:
            assert run[f"metrics.{key}"] == run[f"metrics.{key}"], (model, key)
        # Only k of the experts run per sample: fewer active than total parameters.
        assert run["metrics.params/active_per_sample"] < run["metrics.params/total"]
        found = artifacts(run.run_id)
        assert {"config.yaml", "layers.csv", "model.safetensors", "plots/expert_load.png"} <= found
    ptsne = runs.loc["ptsne_moe"]
    for key in MAP_METRICS:
        assert ptsne[f"metrics.{key}"] == ptsne[f"metrics.{key}"]
    assert ptsne["metrics.gate/trustworthiness"] > 0.9  # well-separated clusters
    assert "plots/gating_map.png" in artifacts(ptsne.run_id)
    assert (
        "metrics.gate/trustworthiness" not in runs.columns
        or runs.loc["sgmoe"]["metrics.gate/trustworthiness"] != runs.loc["sgmoe"]["metrics.gate/trustworthiness"]
    )  # NaN: noisy top-k has no map
    # The exported file rebuilds the model, which predicts (on the same data) what the run measured.
    path = mlflow.MlflowClient().download_artifacts(ptsne.run_id, "model.safetensors", str(trained))
    model = load_model(path)
    assert model(torch.randn(5, 32)).logits.shape == (5, 4)


@pytest.mark.slow
def test_pruned_fcl_run_reaches_the_exact_target_and_logs_its_layers(trained):
    runs = search_runs(trained)
    (run,) = (row for _, row in runs.iterrows() if row["tags.model"] == "fcl")
    assert run["metrics.prune/sparsity"] == pytest.approx(0.8, abs=1e-6)
    assert run["tags.prune"] == "magnitude"
    dense = 64 * 300 + 300 * 100 + 100 * 10
    assert run["metrics.params/nonzero"] == pytest.approx(round(0.2 * 64 * 300) + round(0.2 * 30000) + 200 + 410)
    assert run["metrics.compression/ratio_vs_fcl"] == pytest.approx((dense + 410) / run["metrics.params/nonzero"])
    assert run["metrics.size/sparse_bytes"] < run["metrics.size/dense_bytes"]


def test_impossible_k_is_one_line_exit_2(run_cli):
    proc = run_cli("train", "model=sgmoe", "model.k=20", "data=digits", "logger=none", check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert any("k=20" in line and "num_experts=8" in line for line in errors), proc.stderr
