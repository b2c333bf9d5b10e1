"""Dropout and DropConnect (model.dropout, model.dropconnect): dropped at the configured rate in
training, exactly the plain network in eval mode, pruned weights never revived, gates left alone,
bad values one line, and a real run with both on."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, errors, search_runs

from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.gating.ptsne import PTSNEGate
from ssmoe_cli.models.gating.softmax import SoftmaxGate
from ssmoe_cli.models.layers import ExpertLinear, MaskedLinear, masked_layers
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.models.topology.small_world import SmallWorld

pytestmark = pytest.mark.usefixtures("one_thread")

P = 0.3


def tolerance(n: int, p: float = P) -> float:
    """Six standard deviations of the observed drop rate of n independent Bernoulli(p) draws."""
    return 6 * math.sqrt(p * (1 - p) / n)


def effective_linear(layer: MaskedLinear) -> torch.Tensor:
    """The weight one forward pass used, read back through the identity input: out = W_used^T + b."""
    out = layer(torch.eye(layer.in_features))
    return (out - layer.bias).T


def effective_experts(layer: ExpertLinear, experts: torch.Tensor | None = None) -> torch.Tensor:
    """As effective_linear, for stacked experts: (E, out, in), or (M, out, in) for `experts`."""
    n = layer.num_experts if experts is None else len(experts)
    eye = torch.eye(layer.in_features).expand(n, -1, -1)
    bias = layer.bias if experts is None else layer.bias[experts]
    return (layer(eye, experts) - bias.unsqueeze(1)).transpose(1, 2)


def check_dropped(used: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, p: float = P) -> None:
    """Of the unmasked weights about p are dropped, the others scaled by 1/(1-p); masked ones are 0."""
    kept = mask & (used != 0)
    live = int(mask.sum())
    rate = 1 - int(kept.sum()) / live
    assert abs(rate - p) < tolerance(live, p), rate
    torch.testing.assert_close(used[kept], weight[kept] / (1 - p), rtol=1e-5, atol=1e-6)
    assert not used[~mask].any()


def test_dropconnect_drops_the_configured_fraction_of_a_linear_layer_with_inverted_scaling():
    torch.manual_seed(0)
    layer = MaskedLinear(200, 150)
    layer.dropconnect = P
    with torch.no_grad():  # no weight is exactly zero, so a zero in the used weight is a drop
        layer.weight.copy_(torch.empty_like(layer.weight).uniform_(0.1, 1.0))
    first, second = effective_linear(layer), effective_linear(layer)
    check_dropped(first, layer.weight.detach(), layer.mask)
    check_dropped(second, layer.weight.detach(), layer.mask)
    assert not torch.equal(first, second)  # a fresh draw on every forward pass


@pytest.mark.parametrize("gathered", [False, True], ids=["all-experts", "gathered-experts"])
def test_dropconnect_on_stacked_experts_and_their_gathered_rows(gathered):
    torch.manual_seed(1)
    layer = ExpertLinear(6, 40, 50)
    layer.dropconnect = P
    with torch.no_grad():
        layer.weight.copy_(torch.empty_like(layer.weight).uniform_(0.1, 1.0))
    layer.set_mask(torch.rand_like(layer.weight) > 0.25)  # pruned weights must stay zero too
    experts = torch.tensor([4, 0, 4, 2]) if gathered else None
    sel = slice(None) if experts is None else experts
    check_dropped(effective_experts(layer, experts), layer.weight.detach()[sel], layer.mask[sel])
    # Route units read single rows of a first layer: they are dropped the same way.
    units = torch.arange(0, 6 * 50, 7)
    rows, _ = layer.gather_rows(units)
    flat_w, flat_m = layer.weight.detach().reshape(-1, 40)[units], layer.mask.reshape(-1, 40)[units]
    check_dropped(rows, flat_w, flat_m)


def test_pruned_weights_stay_zero_and_get_no_gradient_under_dropconnect():
    torch.manual_seed(2)
    layer = MaskedLinear(120, 90)
    layer.dropconnect = 0.5
    mask = torch.rand_like(layer.weight) > 0.6
    layer.set_mask(mask)
    with torch.no_grad():
        layer.weight.add_(0.5)  # what an optimizer step does to the raw tensor before the mask is re-applied
    for _ in range(5):
        used = effective_linear(layer)
        assert not used[~mask].any()
    layer(torch.randn(8, 120)).square().sum().backward()
    assert not layer.weight.grad[~mask].any() and layer.weight.grad[mask].any()


def _mixture(dropout: float, dropconnect: float, gate: str = "noisy_topk", seed: int = 0) -> MixtureOfExperts:
    torch.manual_seed(seed)
    g = NoisyTopKGate(in_features=12, num_experts=6, k=2) if gate == "noisy_topk" else SoftmaxGate(12, 6)
    return MixtureOfExperts(
        12, 5, g, SmallWorld(degree=2, rewire_p=0.1, fan_out=3), num_experts=6, k=2,
        expert_hidden=[16, 8], dispatch="dense", seed=seed, dropout=dropout, dropconnect=dropconnect,
    )  # fmt: skip


def _pair(kind: str, p: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(regularised at p, plain) networks of `kind` with the same weights."""
    if kind == "fcl":
        torch.manual_seed(3)
        regularised, plain = FCL(12, 5, [16, 8], dropout=p, dropconnect=p), FCL(12, 5, [16, 8])
    else:
        regularised, plain = _mixture(p, p, gate=kind), _mixture(0.0, 0.0, gate=kind)
    # Layer by layer: FCL's nn.Dropout modules shift the indices of its Sequential.
    for a, b in zip(masked_layers(plain), masked_layers(regularised), strict=True):
        a.load_state_dict(b.state_dict())
    return regularised, plain


@pytest.mark.parametrize("kind", ["fcl", "noisy_topk"])
def test_eval_mode_is_exactly_the_network_without_dropout_or_dropconnect(kind):
    regularised, plain = _pair(kind, 0.4)
    x = torch.randn(64, 12)
    regularised.eval(), plain.eval()
    assert torch.equal(regularised(x).logits, plain(x).logits)
    regularised.train(), plain.train()
    torch.manual_seed(4)
    noisy = regularised(x).logits
    torch.manual_seed(4)
    assert not torch.equal(noisy, plain(x).logits)  # training does drop something


@pytest.mark.parametrize("kind", ["fcl", "softmax"])
def test_at_zero_a_training_pass_draws_nothing_and_is_the_eval_pass(kind):
    """Off costs nothing: no random draw at all (the RNG stream is untouched), the same logits."""
    _, plain = _pair(kind, 0.0)
    x = torch.randn(64, 12)
    plain.train()
    state = torch.get_rng_state()
    trained = plain(x).logits
    assert torch.equal(torch.get_rng_state(), state)
    plain.eval()
    assert torch.equal(trained, plain(x).logits)


def test_mixture_dropout_drops_hidden_and_route_units_at_the_configured_rate():
    model = _mixture(dropout=P, dropconnect=0.0)
    with torch.no_grad():  # every first-layer unit outputs relu(1) = 1: a zero after it is a drop
        model.layers[0].weight.zero_()
        model.layers[0].bias.fill_(1.0)
    seen = []
    model.layers[1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    xe = torch.randn(6, 500, 12)
    model.train()
    model.experts(xe)
    h = seen[-1]
    torch.testing.assert_close(h[h != 0], torch.full_like(h[h != 0], 1 / (1 - P)))
    assert abs((h == 0).float().mean().item() - P) < tolerance(h.numel())
    routes = model.route_activations(xe)
    assert abs((routes == 0).float().mean().item() - P) < tolerance(routes.numel())
    model.eval()
    model.experts(xe)
    assert torch.equal(seen[-1], torch.ones_like(h))
    assert torch.equal(model.route_activations(xe), torch.ones_like(routes))


def test_dropconnect_reaches_experts_routes_and_fcl_layers_but_never_a_gate():
    moe = _mixture(0.0, 0.25)
    for layer in masked_layers(moe):
        assert layer.dropconnect == (0.0 if layer.role == "gate" else 0.25), layer.role
    assert moe.route is not None and moe.route.dropconnect == 0.25
    ptsne = MixtureOfExperts(12, 5, PTSNEGate(in_features=12, num_experts=6, k=2), num_experts=6, dropconnect=0.1)
    assert {layer.role for layer in masked_layers(ptsne) if layer.dropconnect == 0} == {"gate"}
    fcl = FCL(12, 5, [16], dropconnect=0.2)
    assert [layer.dropconnect for layer in masked_layers(fcl)] == [0.2, 0.2]


@pytest.mark.parametrize("key, value", [("dropconnect", 1.0), ("dropconnect", -0.1), ("dropout", 1.0)])
def test_drop_probabilities_outside_0_1_are_refused(key, value):
    with pytest.raises(ValueError, match=rf"model\.{key}={value}: must be a number in \[0, 1\)"):
        FCL(12, 5, [16], **{key: value})
    with pytest.raises(ValueError, match=rf"model\.{key}={value}"):
        _mixture(**{"dropout": 0.0, "dropconnect": 0.0, key: value})  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_run_with_dropout_and_dropconnect_finishes_and_logs_them(run_cli, tmp_path, mlflow_db):
    bad = run_cli("train", "model=fcl", "data=digits", "model.dropconnect=1", "threads=1", *FAST, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert errors(bad.stderr) == [
        "ssmoe: error: model.dropconnect=1: must be a number in [0, 1) (the probability of dropping; 0 = off)"
    ]
    run_cli("train", "model=sgmoe", "data=digits", "model.dropout=0.2", "model.dropconnect=0.1", "threads=1", *FAST)
    runs = search_runs(tmp_path)
    assert len(runs) == 1  # the refused job created no run
    run = runs.iloc[0]
    assert run.status == "FINISHED"
    assert run["params.model.dropout"] == "0.2" and run["params.model.dropconnect"] == "0.1"
    assert 0 < run["metrics.test/acc"] <= 1 and run["metrics.params/total"] > 0
