"""OBD's Hessian diagonals against exact Hessians (torch.autograd.functional.hessian) on models
whose Hessian is known, and the per-sample Fisher against the squared-mean-gradient bug."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.layers import MaskedLinear
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.models.topology.small_world import SmallWorld
from ssmoe_cli.prune import fisher_diagonal, hutchinson_diagonal, obd_prune, obd_saliency, target_layers
from ssmoe_cli.prune.obd import _squared_grads_loop


def half_squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """l = 1/2 ||out - y||^2 per sample, averaged over the batch: Hessian (1/N) sum x x^T per output."""
    return 0.5 * (out - y).square().sum(1).mean()


def regression(n: int = 64, d: int = 6, outputs: int = 2, seed: int = 0):
    """A linear model (one layer, role hidden) and targets whose residuals are exactly +-1: there the empirical Fisher
    (1/N) sum r_i^2 x_i^2 equals the Hessian diagonal (1/N) sum x_i^2 exactly."""
    torch.manual_seed(seed)
    model = nn.Sequential(MaskedLinear(d, outputs, bias=False))
    x = torch.randn(n, d)
    signs = torch.randint(0, 2, (n, outputs)).float() * 2 - 1
    with torch.no_grad():
        y = model(x) - signs
    return model, x, y


def exact_diagonal(model: nn.Module, layer: MaskedLinear, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    def loss_of(w: torch.Tensor) -> torch.Tensor:
        return loss_fn(torch.func.functional_call(model, {"0.weight": w}, (x,)), y)

    h = torch.autograd.functional.hessian(loss_of, layer.weight.detach())
    n = layer.weight.numel()
    return h.reshape(n, n).diagonal().reshape(layer.weight.shape)


def test_fisher_equals_the_exact_hessian_diagonal_of_linear_regression():
    model, x, y = regression()
    layers = target_layers(model, ["hidden"])
    fisher = fisher_diagonal(model, layers, [(x[:40], y[:40]), (x[40:], y[40:])], loss_fn=half_squared_error)["0"]
    exact = exact_diagonal(model, model[0], x, y, half_squared_error)
    assert torch.allclose(fisher, exact, rtol=1e-5, atol=1e-6)
    assert torch.allclose(exact, (x.square().mean(0)).expand(2, -1), rtol=1e-5)  # (1/N) sum x^2, known


def test_fisher_is_the_mean_of_per_sample_squares_not_the_squared_mean_gradient():
    model, x, y = regression()
    layers = target_layers(model, ["hidden"])
    fisher = fisher_diagonal(model, layers, [(x, y)], loss_fn=half_squared_error)["0"]
    batch_grad = torch.autograd.grad(half_squared_error(model(x), y), model[0].weight)[0]
    squared_mean = batch_grad.square()  # the public-port bug: ~100x smaller here
    assert fisher.sum() > 20 * squared_mean.sum()
    weight = model[0].weight
    per_sample = torch.stack(
        [torch.autograd.grad(half_squared_error(model(x[i : i + 1]), y[i : i + 1]), weight)[0] for i in range(64)]
    )
    assert torch.allclose(fisher, per_sample.square().mean(0), rtol=1e-5, atol=1e-7)


def test_fisher_matches_the_cross_entropy_hessian_with_labels_from_the_model():
    """Softmax regression: H = (1/N) sum (diag p - p p^T) (x) x x^T exactly (logits linear in W), and
    E_y~p[g g^T] is the same matrix, so the Fisher with sampled labels converges to it."""
    torch.manual_seed(1)
    model = nn.Sequential(MaskedLinear(4, 3, bias=False))
    x = torch.randn(20000, 4)
    with torch.no_grad():
        y = torch.multinomial(F.softmax(model(x), dim=1), 1).squeeze(1)
    layers = target_layers(model, ["hidden"])
    fisher = fisher_diagonal(model, layers, [(x, y)], loss_fn=F.cross_entropy, chunk=5000)["0"]
    exact = exact_diagonal(model, model[0], x, y, F.cross_entropy)
    assert torch.allclose(fisher, exact, rtol=0.06)


def test_hutchinson_matches_the_exact_hessian_diagonal():
    model, x, y = regression()
    layers = target_layers(model, ["hidden"])
    est = hutchinson_diagonal(model, layers, [(x, y)], probes=3000, loss_fn=half_squared_error)["0"]
    exact = exact_diagonal(model, model[0], x, y, half_squared_error)
    assert torch.allclose(est, exact, atol=0.03 * float(exact.max()))


def test_hutchinson_matches_the_exact_diagonal_of_a_nonlinear_network():
    torch.manual_seed(0)
    model = FCL(5, 3, hidden=(4,))
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    layer = model.net[0]

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(model, {"net.0.weight": w}, (x,)).logits, y)

    exact = torch.autograd.functional.hessian(loss_of, layer.weight.detach()).reshape(20, 20).diagonal().reshape(4, 5)
    est = hutchinson_diagonal(model, target_layers(model, ["hidden"]), [(x, y)], probes=3000)["net.0"]
    assert torch.allclose(est, exact, atol=0.05 * float(exact.abs().max()))


def test_vectorised_and_looped_per_sample_gradients_agree():
    torch.manual_seed(0)
    model = FCL(8, 3, hidden=(6,))
    x, y = torch.randn(40, 8), torch.randint(0, 3, (40,))
    layers = target_layers(model)
    fisher = fisher_diagonal(model, layers, [(x, y)], chunk=16)
    looped = _squared_grads_loop(model, layers, x, y, lambda out, t: F.cross_entropy(out.logits, t))
    for (name, f), s in zip(fisher.items(), looped, strict=True):
        assert torch.allclose(f, s / 40, rtol=1e-5, atol=1e-8), name


def moe() -> MixtureOfExperts:
    torch.manual_seed(0)
    gate = NoisyTopKGate(in_features=10, num_experts=6, k=2)
    with torch.no_grad():
        gate.w_gate.weight.normal_()
    # 6 experts, k = 2: capacity dispatch (data-dependent buffer size); per-sample gradients use dense
    return MixtureOfExperts(
        10, 4, gate, SmallWorld(degree=2, rewire_p=0.3, fan_out=3), num_experts=6, k=2, expert_hidden=(8,)
    )


def test_fisher_of_a_capacity_dispatch_moe_equals_a_per_sample_loop():
    model = moe().eval()  # eval: no gate noise, so both computations see the same function
    assert model.resolved_dispatch(2, batch=12) == "capacity"
    x, y = torch.randn(12, 10), torch.randint(0, 4, (12,))
    layers = target_layers(model, ["hidden", "output", "route", "gate"])
    fisher = fisher_diagonal(model, layers, [(x, y)])
    manual = {n: torch.zeros_like(layer.weight) for n, layer in layers.items()}
    for i in range(12):
        loss = F.cross_entropy(model(x[i : i + 1]).logits, y[i : i + 1])
        grads = torch.autograd.grad(loss, [layer.weight for layer in layers.values()], allow_unused=True)
        for n, g in zip(layers, grads, strict=True):
            if g is not None:
                manual[n] += g.square() / 12
    for n in layers:
        assert torch.allclose(fisher[n], manual[n], rtol=1e-5, atol=1e-9), n
    assert fisher["route"].abs().sum() > 0 and fisher["gate.w_gate"].abs().sum() > 0
    assert model.dispatch == "auto"  # restored


class DataDependent(nn.Module):
    """A model vmap cannot batch (a Python branch on a tensor value)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = MaskedLinear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out if float(out.detach().sum()) < 1e9 else out * 0


def test_fisher_falls_back_to_a_loop_where_vmap_fails():
    torch.manual_seed(0)
    model = DataDependent()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    fisher = fisher_diagonal(model, target_layers(model, ["hidden"]), [(x, y)])["linear"]
    per_sample = [
        torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), model.linear.weight)[0]
        for i in range(10)
    ]
    assert torch.allclose(fisher, torch.stack(per_sample).square().mean(0), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("hessian", ["fisher", "hutchinson"])
def test_saliency_is_half_h_w_squared_and_zero_where_masked(hessian):
    model = moe()
    layers = target_layers(model)
    hidden = layers["layers.0"]
    mask = torch.rand(hidden.weight.shape) > 0.5
    hidden.set_mask(mask)
    batches = [(torch.randn(16, 10), torch.randint(0, 4, (16,)))]
    saliency = obd_saliency(model.train(), layers, batches, hessian=hessian, probes=3, seed=5)
    assert torch.all(saliency["layers.0"][~mask] == 0)
    if hessian == "fisher":
        model.eval()  # deterministic forward: recompute h and compare with the formula
        h = fisher_diagonal(model, layers, batches)
        for n, layer in layers.items():
            expected = h[n] * layer.masked_weight().detach().square() / 2
            assert torch.allclose(obd_saliency(model, layers, batches)[n], expected), n
    else:  # the probes are reproducible from the seed (eval mode: no gate noise either)
        saliency = obd_saliency(model.eval(), layers, batches, hessian=hessian, probes=3, seed=5)
        again = obd_saliency(model, layers, batches, hessian=hessian, probes=3, seed=5)
        assert all(torch.equal(saliency[n], again[n]) for n in layers)


def test_obd_prunes_the_lowest_saliency_weights_exactly():
    model = FCL(8, 3, hidden=(16,))
    batches = [(torch.randn(32, 8), torch.randint(0, 3, (32,))) for _ in range(2)]
    layers = target_layers(model)
    saliency = obd_saliency(model.train(), layers, batches)
    reached = obd_prune(model, batches, 0.7)
    for n, layer in layers.items():
        assert abs(int((~layer.mask).sum()) - 0.7 * layer.weight.numel()) < 1  # its share of the exact total
        assert saliency[n][layer.mask].min() >= saliency[n][~layer.mask].max(), n
    assert sum(int((~layer.mask).sum()) for layer in layers.values()) == round(0.7 * (8 * 16 + 16 * 3))
    assert reached == pytest.approx(0.7, abs=1e-2)
