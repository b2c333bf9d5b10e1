"""Budgets: `prune.target_nonzero` reaches exactly that many nonzero inference parameters (params/nonzero)
for every method on the dense network, SGMoE and the t-SNE-gated mixture; the gate can be pruned; the
counts are split over layers exactly; unreachable budgets are one clear error; random pruning is the
seeded sanity baseline."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, errors, search_runs
from test_prune import CLASSES, IN, fit

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.models.accounting import account, nonzero_params
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.gating.ptsne import PTSNEGate
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.models.topology.small_world import SmallWorld
from ssmoe_cli.prune import MagnitudePruning, OBDPruning, StochasticNet, target_layers
from ssmoe_cli.prune.masks import allocate, budget_sparsity
from ssmoe_cli.prune.random import RandomPruning, random_prune

ALL = ["hidden", "output", "route", "gate"]


def fcl() -> FCL:
    torch.manual_seed(0)
    return FCL(IN, CLASSES, hidden=(32, 16))


def sgmoe() -> MixtureOfExperts:
    torch.manual_seed(0)
    gate = NoisyTopKGate(in_features=IN, num_experts=6, k=2)
    return MixtureOfExperts(IN, CLASSES, gate, SmallWorld(degree=2, rewire_p=0.3, fan_out=3), 6, 2, (16,), seed=0)


def ptsne_moe() -> MixtureOfExperts:
    torch.manual_seed(0)
    gate = PTSNEGate(in_features=IN, num_experts=6, k=2, hidden=(8,))
    return MixtureOfExperts(IN, CLASSES, gate, SmallWorld(degree=2, rewire_p=0.3, fan_out=3), 6, 2, (16,), seed=0)


MODELS = {"fcl": fcl, "sgmoe": sgmoe, "ptsne_moe": ptsne_moe}
SCHEDULE = {"rounds": 2, "start": 1, "every": 1, "min_retrain": 1}
METHODS = {
    "magnitude": lambda n: MagnitudePruning(targets=ALL, target_nonzero=n, **SCHEDULE),
    "obd": lambda n: OBDPruning(targets=ALL, target_nonzero=n, batches=2, **SCHEDULE),
    "random": lambda n: RandomPruning(targets=ALL, target_nonzero=n, seed=3, **SCHEDULE),
    "stochasticnet": lambda n: StochasticNet(targets=ALL, target_nonzero=n, seed=3),
}


def test_allocate_splits_a_count_exactly_in_proportion_with_floors():
    assert allocate(5, [10, 10], [0, 0]) == [3, 2]  # 2.5 + 2.5: the tie goes to the first
    assert allocate(5, [10, 10, 10], [0, 0, 0]) == [2, 2, 1]
    assert allocate(10, [10, 10], [8, 0]) == [8, 2]  # a layer already past its share keeps its floor
    assert allocate(7, [4, 4], [4, 0]) == [4, 3]
    assert allocate(6, [2, 4], [0, 0]) == [2, 4]
    assert allocate(99, [10, 10], [0, 0]) == [10, 10]  # never more than a layer has


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", list(MODELS))
def test_target_nonzero_is_exact_for_every_method_and_model(name, method):
    model = MODELS[name]()
    dense = nonzero_params(model)
    budget = dense // 5 + 7  # an arbitrary, odd count
    fit(model, METHODS[method](budget), epochs=3)
    assert account(model).params_nonzero == nonzero_params(model) == budget
    if name != "fcl":  # the gate was pruned with the rest (the paper sparsifies everything)
        gate = [layer for layer in target_layers(model, ["gate"]).values()]
        assert all(int((~layer.mask).sum()) > 0 for layer in gate)


def test_sgmoe_noise_weights_are_neither_pruned_nor_counted():
    model = sgmoe()
    budget = nonzero_params(model) // 4
    fit(model, METHODS["magnitude"](budget), epochs=3)
    assert bool(model.gate.w_noise.mask.all())  # W_noise: train-only, never a target
    assert nonzero_params(model) == budget  # ... and not in the count either


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_budget_sparsity_then_prune_is_exact_in_both_scopes(scope):
    model = ptsne_moe()
    budget = 1234
    s = budget_sparsity(model, ALL, budget)
    random_prune(model, s, ALL, torch.Generator().manual_seed(0), scope)
    assert nonzero_params(model) == budget
    model = ptsne_moe()  # StochasticNet's draw, per layer or over all targeted weights at once
    fit(model, StochasticNet(targets=ALL, target_nonzero=budget, seed=1, scope=scope), epochs=1)
    assert nonzero_params(model) == budget
    # Per layer every layer keeps its share (within one weight); one global draw gives no such guarantee.
    layers = [layer for layer in target_layers(model, ["hidden", "output", "gate"]).values()]
    shares_kept = [abs(int(layer.mask.sum()) - layer.weight.numel() * (1 - s)) < 1 for layer in layers]
    assert all(shares_kept) == (scope == "layer")


def test_unreachable_budgets_are_one_clear_error():
    model = ptsne_moe()
    with pytest.raises(SsmoeError, match=r"below the .* outside prune.targets.*add roles to prune.targets"):
        budget_sparsity(model, ["hidden"], 100)  # gate, output, biases alone exceed 100
    with pytest.raises(SsmoeError, match=r"above the .* parameters this model can keep"):
        budget_sparsity(model, ALL, nonzero_params(model) + 1)
    assert budget_sparsity(fcl(), ALL, nonzero_params(fcl())) == 0.0  # the whole model: nothing to prune
    with pytest.raises(SsmoeError, match="target_nonzero"):  # found before training, not after epochs
        fit(fcl(), METHODS["magnitude"](3), epochs=3)


def test_random_pruning_is_seeded_and_ignores_magnitude():
    def kept(seed: int) -> torch.Tensor:
        model = fcl()
        random_prune(model, 0.5, ["hidden"], torch.Generator().manual_seed(seed))
        return model.net[0].mask.clone()

    assert torch.equal(kept(1), kept(1)) and not torch.equal(kept(1), kept(2))
    model = fcl()
    w = model.net[0].weight.detach().abs().clone()
    random_prune(model, 0.5, ["hidden"], torch.Generator().manual_seed(1))
    mask = model.net[0].mask
    # Magnitude pruning would keep exactly the top half; a random draw keeps small and large weights alike.
    assert w[mask].min() < w.median() < w[~mask].max()


def test_cli_budget_reaches_params_nonzero_and_an_unreachable_one_is_one_line(run_cli, tmp_path):
    proc = run_cli(
        "train", "data=digits", "model=ptsne_moe", "prune=obd", "prune.target_nonzero=20001",
        "prune.targets=[hidden,output,route,gate]", "prune.start=1", "prune.rounds=1", "prune.min_retrain=1",
        "trainer.max_epochs=2", *FAST[1:],
    )  # fmt: skip
    assert "20,001" in proc.stdout
    runs = search_runs(tmp_path)
    assert runs["metrics.params/nonzero"].tolist() == [20001.0]
    assert runs["params.prune.target_nonzero"].tolist() == ["20001"]
    bad = run_cli(
        "train", "data=digits", "model=fcl", "prune=stochasticnet", "prune.target_nonzero=5", *FAST, check=False
    )  # fmt: skip
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(errors(bad.stderr)) == 1 and "prune.target_nonzero=5" in errors(bad.stderr)[0]
