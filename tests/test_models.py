"""Models and accounting: FCL size, the masked layer, the metrics read from masks, and the contracts
(what a model may import, the Gate base, routing facts, routing metrics for any model, the timer)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from ssmoe_cli.models.accounting import dense_accounting, nonzero_params, total_params
from ssmoe_cli.models.base import prunable_layers, routing_of
from ssmoe_cli.models.diagnostics import routing_metrics
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.gating.base import Gate, GateOutput
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.layers import MaskedLinear
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.models.topology import Topology
from ssmoe_cli.models.topology.small_world import SmallWorld
from ssmoe_cli.plots import routing_plots
from ssmoe_cli.timing import latency_ms


def test_lenet_300_100_has_266610_parameters():
    model = FCL(784, 10, hidden=[300, 100])
    assert total_params(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    acc = dense_accounting(model)
    assert acc.params_nonzero == acc.active_per_sample == 266_610
    assert acc.flops_per_sample == 784 * 300 + 300 * 100 + 100 * 10


def test_fcl_returns_logits_and_no_aux():
    out = FCL(5, 3, hidden=[4])(torch.randn(2, 5))
    assert out.logits.shape == (2, 3) and out.aux == {}


def test_masked_linear_zeroes_and_blocks_gradient():
    torch.manual_seed(0)
    layer = MaskedLinear(4, 3)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, :2] = False
    layer.set_mask(mask)
    assert torch.all(layer.weight[0, :2] == 0)
    layer(torch.randn(5, 4)).sum().backward()
    assert torch.all(layer.weight.grad[0, :2] == 0)
    assert nonzero_params(layer) == 12 - 2 + 3
    # Masked entries count as zero even if something writes into the raw weight.
    with torch.no_grad():
        layer.weight[0, 0] = 5.0
    assert nonzero_params(layer) == 12 - 2 + 3
    assert torch.equal(
        layer(torch.ones(1, 4)), torch.nn.functional.linear(torch.ones(1, 4), layer.weight * mask, layer.bias)
    )


# -- the contracts ------------------------------------------------------------------------------------
MODELS_DIR = Path(__file__).resolve().parents[1] / "src" / "ssmoe_cli" / "models"
# What a model may not know: the training framework, the config system, the tracker, the app above it.
FORBIDDEN = ("pytorch_lightning", "lightning", "hydra", "omegaconf", "mlflow", "rich")
FORBIDDEN_SSMOE = ("train", "tracking", "report", "module", "prune", "export", "cli", "callbacks", "plots")


def test_models_import_nothing_from_the_layers_above():
    for path in sorted(MODELS_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                parts = name.split(".")
                assert parts[0] not in FORBIDDEN, f"{path.name} imports {name}"
                if parts[0] == "ssmoe_cli" and len(parts) > 1:
                    assert parts[1] not in FORBIDDEN_SSMOE, f"{path.name} imports {name}"


def test_a_gate_must_implement_the_contract():
    class Incomplete(Gate):  # no active_params / active_macs
        def forward(self, x: torch.Tensor) -> GateOutput:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()

    class NotAGate(nn.Module):
        num_experts, k = 4, 2

    with pytest.raises(TypeError, match="subclasses ssmoe_cli.models.gating.Gate"):
        MixtureOfExperts(6, 3, NotAGate(), num_experts=4, k=2)

    class NoLinks(Topology):  # no in_links
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoLinks()


def test_a_gate_without_a_map_has_no_positions_embedding_or_diagnostics():
    gate = NoisyTopKGate(6, 4, 2)
    x = torch.randn(3, 6)
    assert gate.positions is None and gate.embed(x) is None and gate.diagnostics(x) == {}


def test_routing_facts_of_a_moe_and_of_a_dense_model():
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, NoisyTopKGate(6, 5, 2), SmallWorld(degree=2, fan_out=3), num_experts=5, k=2)
    routing = routing_of(moe)
    assert routing is not None and routing.num_experts == 5 and routing.route is moe.route
    # route column j of expert e reads a unit of expert route_columns[e, j]: one of e's in-links
    assert all(set(routing.route_columns[e].tolist()) <= set(routing.in_links[e].tolist()) for e in range(5))
    assert routing.positions().shape == (5, 2)  # no map: the ring
    assert routing.active_experts(torch.randn(7, 6)).sum(1).tolist() == [2] * 7
    # W_noise is train-only: inference never reads it, so pruning never targets it.
    assert set(prunable_layers(moe)) == {"gate.w_gate", "layers.0", "layers.1", "route"}
    fcl = FCL(6, 3, hidden=[4])
    assert routing_of(fcl) is None and set(prunable_layers(fcl)) == {"net.0", "net.2"}


def test_a_model_without_routing_has_no_routing_metrics_or_plots(tmp_path):
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    assert routing_metrics(FCL(6, 3, hidden=[4]), x, y, x, y) == ({}, None)
    assert routing_plots(None, tmp_path) == [] and not list(tmp_path.iterdir())


def test_moe_routing_metrics_and_plots(tmp_path):
    torch.manual_seed(0)
    moe = MixtureOfExperts(6, 3, NoisyTopKGate(6, 4, 2), num_experts=4, k=2)
    with torch.no_grad():
        moe.gate.w_gate.weight.normal_()
    x, y = torch.randn(50, 6), torch.randint(0, 3, (50,))
    metrics, view = routing_metrics(moe, x, y, x, y)
    assert {"experts/load_cv2", "experts/load_max_over_mean", "experts/output_corr", "gate/entropy"} <= set(metrics)
    assert not any(name.startswith("gate/") and name != "gate/entropy" for name in metrics)  # no map: no map metrics
    load = view.load.double()
    assert metrics["experts/load_cv2"] == pytest.approx(float(load.var(unbiased=False) / load.mean() ** 2))
    assert moe.training  # the mode is restored
    plots = [p.name for p in routing_plots(view, tmp_path)]
    assert "expert_load.png" in plots and "gating_map.png" not in plots  # no map: no gating map


def test_latency_timer_runs_in_eval_mode_and_restores_the_mode():
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training)
            return x

    probe = Probe().train()
    assert latency_ms(probe, torch.zeros(1), repeats=3, warmup=2) >= 0.0
    assert seen == [False] * 5 and probe.training
