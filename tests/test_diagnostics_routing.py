"""Routing diagnostics (issue 14): utilisation, dead experts, MaxVio, the per-class table, the output
correlation on routed inputs and drop counting on constructed routings (values by hand), then one real
`ssmoe train` run that logs them and the routing tables."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from conftest import FAST, search_runs

from ssmoe_cli import metrics as M
from ssmoe_cli.models.diagnostics import (
    class_expert_mi,
    class_routing,
    dropped,
    routed_output_corr,
    routing_metrics,
    utilisation,
)
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.plots import routing_plots

# 4 samples x 4 experts, k <= 2; expert 3 is never chosen. Assignments 3, 3, 1, 0 of 7.
WEIGHTS = torch.tensor(
    [
        [0.7, 0.3, 0.0, 0.0],
        [0.6, 0.0, 0.4, 0.0],
        [0.5, 0.5, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
    ]
)
LABELS = torch.tensor([0, 0, 1, 1])


def test_utilisation_dead_experts_and_max_vio_by_hand():
    use = utilisation(WEIGHTS)
    assert use.samples.tolist() == pytest.approx([3 / 4, 3 / 4, 1 / 4, 0.0])
    assert use.assignments.tolist() == pytest.approx([3 / 7, 3 / 7, 1 / 7, 0.0])
    assert use.mass.tolist() == pytest.approx([1.8 / 4, 1.8 / 4, 0.4 / 4, 0.0])
    assert use.dead == 1
    assert use.max_vio == pytest.approx((3 / 7) / (1 / 4) - 1)  # = 5/7
    even = utilisation(torch.eye(4))  # one expert per sample, each once: perfectly even
    assert even.dead == 0 and even.max_vio == pytest.approx(0.0)


def test_per_class_table_and_class_expert_information_by_hand():
    table, counts = class_routing(WEIGHTS, LABELS, num_classes=3)
    assert counts.tolist() == [2, 2, 0]
    assert table[0].tolist() == pytest.approx([1.3 / 2, 0.3 / 2, 0.4 / 2, 0.0])
    assert table[1].tolist() == pytest.approx([0.5 / 2, 1.5 / 2, 0.0, 0.0])
    assert table[2].tolist() == [0.0] * 4  # no test sample of class 2: an empty row, not NaN
    # Two classes, each wholly on its own expert: I = H(class) = log 2; spread alike: 0.
    separate = class_expert_mi(torch.eye(2), torch.tensor([5, 5]))
    assert separate == pytest.approx(math.log(2))
    assert class_expert_mi(torch.full((2, 2), 0.5), torch.tensor([5, 5])) == pytest.approx(0.0, abs=1e-12)
    # The table's own case: p(c) = 1/2, p(e) = (0.45, 0.45, 0.1, 0).
    p_e = [0.45, 0.45, 0.1]
    rows = [[0.65, 0.15, 0.2], [0.25, 0.75, 0.0]]
    by_hand = sum(0.5 * p * math.log(p / p_e[e]) for row in rows for e, p in enumerate(row) if p > 0)
    assert class_expert_mi(table, counts) == pytest.approx(by_hand)


def test_output_correlation_reads_only_the_inputs_both_experts_are_routed():
    gen = torch.Generator().manual_seed(0)
    n = 8
    base = torch.randn(n, 2, generator=gen)
    out = torch.randn(3, n, 2, generator=gen) * 5  # outputs on inputs an expert is not routed: noise
    active = torch.zeros(n, 3, dtype=torch.bool)
    active[:3, [0, 1]] = True  # experts 0 and 1 share samples 0-2
    active[3:5, [1, 2]] = True  # experts 1 and 2 share samples 3-4
    active[5:, 0] = True  # samples 5-7: expert 0 alone
    out[0, :3], out[1, :3] = base[:3], 2 * base[:3] + 1  # r = +1 on their shared samples
    out[1, 3:5], out[2, 3:5] = base[3:5], -base[3:5]  # r = -1 on theirs
    # Weighted by shared samples: (3 * 1 + 2 * (-1)) / 5; experts 0 and 2 share none.
    assert routed_output_corr(out, active, min_shared=2) == pytest.approx(0.2)
    # The rule's floor: with 3 shared samples required, only the (0, 1) pair counts.
    assert routed_output_corr(out, active, min_shared=3) == pytest.approx(1.0)
    one_each = torch.zeros(n, 3, dtype=torch.bool)
    one_each[torch.arange(n), torch.arange(n) % 3] = True  # k = 1: no sample mixes two experts
    assert math.isnan(routed_output_corr(out, one_each, min_shared=1))


def test_drop_counts_sum_over_batches_of_256_and_no_capacity_drops_nothing():
    seen = []

    def drop_counts(xb: torch.Tensor) -> tuple[int, int, int]:
        seen.append(len(xb))
        return 2 * len(xb), len(xb) // 4, 1  # pairs, dropped pairs, samples that lost both

    x = torch.zeros(600, 3)
    pairs, samples = dropped(SimpleNamespace(drop_counts=drop_counts), x)
    assert seen == [256, 256, 88]
    assert pairs == pytest.approx((64 + 64 + 22) / 1200)
    assert samples == pytest.approx(3 / 600)
    assert dropped(SimpleNamespace(drop_counts=None), x) == (0.0, 0.0)  # a model that never drops


def test_a_capacity_limit_drops_pairs_that_the_metrics_count_per_batch_of_256(one_thread):
    torch.manual_seed(0)
    # Capacity ceil(0.5 * B * k / E) = B / 4 slots per expert for B * k / E = B / 2 pairs on average.
    moe = MixtureOfExperts(6, 3, NoisyTopKGate(6, 4, 2), num_experts=4, k=2, dispatch="capacity", capacity_factor=0.5)
    with torch.no_grad():
        moe.gate.w_gate.weight.normal_()
    x, y = torch.randn(600, 6), torch.randint(0, 3, (600,))
    metrics, _ = routing_metrics(moe, x, y, x, y)
    over = 0
    for xb in x.split(256):  # by hand: each expert keeps its first `cap` pairs of the batch
        counts = torch.bincount(moe.routing().gate_weights(xb).gt(0).nonzero()[:, 1], minlength=4)
        over += int((counts - math.ceil(len(xb) / 4)).clamp_min(0).sum())
    assert over >= 600  # at least half of the 1,200 pairs
    assert metrics[M.DROPPED_PAIRS] == pytest.approx(over / 1200)
    lost = sum(moe.drop_counts(xb)[2] for xb in x.split(256))
    assert metrics[M.DROPPED_SAMPLES] == pytest.approx(lost / 600)
    # The same model without a capacity factor drops nothing.
    moe.capacity_factor = None
    assert routing_metrics(moe, x, y, x, y)[0][M.DROPPED_PAIRS] == 0.0


def test_routing_metrics_of_a_real_mixture_agree_with_its_tables(tmp_path, one_thread):
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, NoisyTopKGate(6, 4, 2), num_experts=4, k=2)
    with torch.no_grad():
        moe.gate.w_gate.weight.normal_()
    x, y = torch.randn(300, 6), torch.randint(0, 3, (300,))
    metrics, view = routing_metrics(moe, x, y, x, y)
    weights = moe.routing().gate_weights(x)
    use = utilisation(weights)
    assert metrics[M.DEAD_EXPERTS] == use.dead
    assert metrics[M.MAX_VIO] == pytest.approx(metrics[M.LOAD_MAX_OVER_MEAN] - 1)
    assert metrics[M.UTIL_MIN] == pytest.approx(float(use.samples.min()))
    assert metrics[M.DROPPED_PAIRS] == 0.0 and metrics[M.DROPPED_SAMPLES] == 0.0  # no capacity limit
    assert -1.0 <= metrics[M.OUTPUT_CORR_ROUTED] <= 1.0
    assert view.by_class is not None and view.by_class.sum(1).tolist() == pytest.approx([1.0] * 3)
    paths = {p.name: p for p in routing_plots(view, tmp_path)}
    assert set(paths) == {"expert_load.png", "expert_utilisation.csv", "routing_by_class.png", "routing_by_class.csv"}
    with paths["expert_utilisation.csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["sample_fraction"]) for r in rows] == pytest.approx(use.samples.tolist(), abs=1e-6)
    assert sum(float(r["gate_mass_share"]) for r in rows) == pytest.approx(1.0, abs=1e-5)


def test_a_ptsne_moe_run_logs_the_diagnostics_and_the_routing_tables(run_cli, tmp_path, store_template):
    shutil.copyfile(store_template, tmp_path / "mlflow.db")
    run_cli(
        "train",
        "model=ptsne_moe",
        "data=digits",
        "gating.pretrain_epochs=3",
        "gating.tsne_batch_size=200",
        "threads=1",
        *FAST,
    )
    (run,) = (row for _, row in search_runs(tmp_path).iterrows())
    new = [M.MAX_VIO, M.DEAD_EXPERTS, M.UTIL_MIN, M.UTIL_MAX, M.IMPORTANCE_CV2, M.CLASS_MI, M.DROPPED_PAIRS]
    new += [M.DROPPED_SAMPLES, M.OUTPUT_CORR_ROUTED, M.OUTPUT_CORR]
    for name in new:
        assert math.isfinite(run[f"metrics.{name}"]), name
    client = mlflow.MlflowClient()
    listed = {f.path for f in client.list_artifacts(run.run_id, "plots")}
    expected = {"plots/routing_by_class.png", "plots/routing_by_class.csv", "plots/expert_utilisation.csv"}
    assert expected <= listed
    folder = Path(client.download_artifacts(run.run_id, "plots", str(tmp_path / "got")))
    with (folder / "routing_by_class.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["class"]) for r in table] == list(range(10))  # digits: 10 classes, one row each
    for r in table:
        assert sum(float(v) for k, v in r.items() if k.startswith("expert_")) == pytest.approx(1.0, abs=1e-4)
    with (folder / "expert_utilisation.csv").open() as fh:
        experts = list(csv.DictReader(fh))
    assert run[f"metrics.{M.DEAD_EXPERTS}"] == sum(float(r["sample_fraction"]) == 0 for r in experts)
    shares = [float(r["assignment_share"]) for r in experts]
    assert run[f"metrics.{M.MAX_VIO}"] == pytest.approx(max(shares) * len(shares) - 1, abs=1e-4)
