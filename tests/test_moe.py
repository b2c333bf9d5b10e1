"""The mixture of experts: dispatch equals the dense reference, isolated = classic MoE, routes and
the per-sample accounting follow k and the fan-out, not the number of experts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.gating.softmax import SoftmaxGate
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.models.topology.isolated import Isolated
from ssmoe_cli.models.topology.small_world import SmallWorld


def make(num_experts=8, k=2, topology=None, in_features=12, hidden=(16,), classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    gate = NoisyTopKGate(in_features=in_features, num_experts=num_experts, k=k)
    with torch.no_grad():  # W_g starts at zero (Shazeer); give it random routing for the tests
        gate.w_gate.weight.normal_()
    model = MixtureOfExperts(
        in_features, classes, gate, topology, num_experts=num_experts, k=k, expert_hidden=hidden, seed=seed, **kw
    )
    return model.eval()


@pytest.mark.parametrize("k", [1, 2, 8])
@pytest.mark.parametrize("topology", [Isolated(), SmallWorld(degree=2, rewire_p=0.3, fan_out=3)])
def test_capacity_dispatch_equals_dense_computation(k, topology):
    model = make(k=k, topology=topology)
    x = torch.randn(50, 12)
    g = model.gate(x)
    dense = model.combine_dense(x, g.weights)
    routed = model.combine_capacity(x, g.indices, g.values)
    pairs = model.combine_pairs(x, g.indices, g.values)
    assert torch.allclose(dense, routed, atol=1e-5)
    assert torch.allclose(dense, pairs, atol=1e-5)
    assert torch.allclose(model(x).logits, dense, atol=1e-5)
    assert torch.allclose(model(x[:1]).logits, dense[:1], atol=1e-5)  # batch 1: auto picks dense (E <= 4k)


def test_auto_dispatch_rule():
    model = make(num_experts=8, k=2)
    assert model.resolved_dispatch(2, batch=1) == "dense"  # 2 pairs < 8 experts <= 4k: one batched pass
    assert make(num_experts=16, k=2).resolved_dispatch(2, batch=1) == "grouped"  # E > 4k: active experts only
    assert model.resolved_dispatch(2, batch=64) == "sorted"  # 16 rows per expert on average
    assert model.resolved_dispatch(2, batch=63) == "capacity"  # 15.75: grouped matmuls too small
    assert make(num_experts=4, k=4).resolved_dispatch(4, batch=64) == "dense"  # every expert active: E <= k
    assert make(num_experts=4, k=2).resolved_dispatch(2, batch=64) == "sorted"
    # capacity where its buffers matter: drops, a hook that must see an expert layer's call, a CSR pass
    assert make(num_experts=8, k=2, capacity_factor=1.25).resolved_dispatch(2, batch=64) == "capacity"
    handle = model.layers[1].register_forward_hook(lambda *args: None)
    assert model.resolved_dispatch(2, batch=64) == "capacity"
    handle.remove()
    from ssmoe_cli.export import CSRExpertLinear

    model.layers[0] = CSRExpertLinear(model.layers[0], full=True, few=False, one=False)
    assert model.resolved_dispatch(2, batch=64) == "capacity"
    model.layers[0].full = False
    assert model.resolved_dispatch(2, batch=64) == "sorted"
    assert make(num_experts=8, k=2).to("meta").resolved_dispatch(2, batch=64) == "capacity"  # measured on CPU only


def test_fixed_capacity_drops_overflow_pairs_and_rescues_samples_left_without_any():
    model = make(num_experts=4, k=1, capacity_factor=0.5)  # capacity = ceil(0.5 * 40 / 4) = 5 per expert
    x = torch.randn(40, 12)
    g = model.gate(x)
    expert = g.indices[:, 0]
    rank = torch.stack([(expert[: i + 1] == expert[i]).sum() - 1 for i in range(40)])
    dropped = int((rank >= 5).sum())
    assert dropped > 0
    # k = 1: a dropped pair leaves its sample with nothing; the fallback runs its top-1 expert with
    # the whole gate mass, so every sample gets the full model's output, and the drops are counted.
    out = model.combine_capacity(x, g.indices, g.values)
    assert torch.allclose(out, model.combine_dense(x, g.weights), atol=1e-5)
    assert model.routing().drop_counts(x) == (40, dropped, dropped)


def test_isolated_moe_is_a_classic_mixture_of_separate_mlps():
    model = make(topology=Isolated())
    x = torch.randn(30, 12)
    g = model.gate(x)
    experts = []
    for e in range(8):
        l1, l2 = nn.Linear(12, 16), nn.Linear(16, 5)
        with torch.no_grad():
            l1.weight.copy_(model.layers[0].weight[e])
            l1.bias.copy_(model.layers[0].bias[e])  # noqa: E702
            l2.weight.copy_(model.layers[1].weight[e])
            l2.bias.copy_(model.layers[1].bias[e])  # noqa: E702
        experts.append(nn.Sequential(l1, nn.ReLU(), l2))
    reference = sum(g.weights[:, e : e + 1] * experts[e](x) for e in range(8))
    assert torch.allclose(model(x).logits, reference, atol=1e-5)


def test_softmax_gate_moe_mixes_all_experts():
    torch.manual_seed(0)
    model = MixtureOfExperts(12, 5, SoftmaxGate(in_features=12, num_experts=4, k=4), num_experts=4, k=4).eval()
    x = torch.randn(10, 12)
    out = model.experts(x.unsqueeze(0).expand(4, -1, -1))
    w = model.gate(x).weights
    assert torch.allclose(model(x).logits, torch.einsum("be,ebc->bc", w, out), atol=1e-5)


def test_a_route_carries_exactly_its_source_units():
    model = make(num_experts=4, k=1, topology=SmallWorld(degree=1, rewire_p=0.0, fan_out=2))
    b = 0
    a = int(model.route_sources[b, 0])
    read = set((model.route_units[b] % 16).tolist())
    x = torch.randn(6, 12).unsqueeze(0).expand(4, -1, -1)
    base = model.experts(x)[b]
    unread = next(j for j in range(16) if j not in read)
    with torch.no_grad():
        model.layers[0].weight[a, unread] += 1.0
    assert torch.allclose(model.experts(x)[b], base)  # b does not read that unit of a
    with torch.no_grad():
        model.layers[0].weight[a, min(read)] += 1.0
    assert not torch.allclose(model.experts(x)[b], base)  # ... but does read this one


def test_accounting_by_hand_on_a_tiny_model():
    # E=3 experts 2 -> 2 -> 2, k=1, each expert reads 1 unit of its ring neighbour (degree 1, fan_out 1).
    model = make(
        num_experts=3,
        k=1,
        in_features=2,
        hidden=(2,),
        classes=2,
        topology=SmallWorld(degree=1, rewire_p=0.0, fan_out=1),
    )
    x = torch.randn(20, 2)
    acc = model.accounting(x)
    gate = model.gate.active_params()
    # per sample: own expert 2*2+2 + 2*2+2 = 12, route weights 2*1 = 2, one route unit 2+1 = 3
    # (the route reads a unit of another expert, never its own: no overlap when k=1).
    assert acc.active_per_sample == pytest.approx(12 + 2 + 3 + gate)
    assert acc.flops_per_sample == pytest.approx(4 + 4 + 2 + 2 + model.gate.active_macs())
    # W_noise is train-only: inference never reads it, so only W_g counts.
    assert acc.params_total == 3 * 12 + 3 * 2 + model.gate.w_gate.weight.numel()


def test_active_parameters_follow_k_and_fan_out_not_the_number_of_experts():
    def expert_part(num_experts, k, fan_out):
        topo = SmallWorld(degree=2, rewire_p=0.2, fan_out=fan_out)
        model = make(num_experts=num_experts, k=k, topology=topo, in_features=20, hidden=(32,))
        acc = model.accounting(torch.randn(200, 20))
        return acc.active_per_sample - model.gate.active_params()

    small, large = expert_part(8, 2, 2), expert_part(64, 2, 2)
    per_expert = 20 * 32 + 32 + 32 * 5 + 5 + 5 * 4  # an expert plus its route weights
    assert 2 * per_expert < large <= 2 * per_expert + 2 * 4 * 21  # k experts + at most their route units
    assert abs(large - small) <= 4 * 21
    assert expert_part(8, 4, 2) > 1.9 * small  # doubles with k
    assert expert_part(8, 2, 8) > small  # grows with fan-out


def test_masks_are_respected_by_forward_and_accounting():
    model = make(topology=Isolated())
    before = model.accounting(torch.randn(50, 12))
    mask = torch.ones_like(model.layers[0].mask)
    mask[:, :, :6] = False  # half of every first-layer row
    model.layers[0].set_mask(mask)
    after = model.accounting(torch.randn(50, 12))
    assert after.params_nonzero == before.params_nonzero - 8 * 16 * 6
    assert after.flops_per_sample == pytest.approx(before.flops_per_sample - 2 * 16 * 6)


def test_training_step_reaches_gate_experts_and_routes():
    model = make(topology=SmallWorld(degree=2, fan_out=2)).train()
    x, y = torch.randn(32, 12), torch.randint(0, 5, (32,))
    out = model(x)
    (F.cross_entropy(out.logits, y) + sum(out.aux.values())).backward()
    assert model.gate.w_gate.weight.grad.abs().sum() > 0
    assert model.layers[0].weight.grad.abs().sum() > 0 and model.route.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bias", [True, False])
def test_batched_linear_trains_in_the_weights_own_layout(bias):
    """batched_linear computes x @ w^T + b per expert block, with autograd as (w @ x^T)^T (w's gradient
    then needs no transposed copy: a speed matter, measured by benchmarks/epoch_time.py), without it
    as x @ w^T: both the same values, and the gradients those of einsum's formula."""
    from ssmoe_cli.models.layers import batched_linear

    torch.manual_seed(0)
    x = torch.randn(3, 5, 7)
    w = torch.randn(3, 4, 7, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True) if bias else None
    expected = torch.einsum("eni,eoi->eno", x, w) + (b.unsqueeze(1) if bias else 0)
    out = batched_linear(x, w, b)
    torch.testing.assert_close(out, expected)
    with torch.no_grad():
        torch.testing.assert_close(batched_linear(x, w, b), expected.detach())
    seed = torch.randn_like(out)
    (out * seed).sum().backward()
    assert w.grad.is_contiguous()
    torch.testing.assert_close(w.grad, torch.einsum("eno,eni->eoi", seed, x))
    if bias:
        torch.testing.assert_close(b.grad, seed.sum(1))


def test_with_rows_appends_rows_and_sends_their_gradients_home():
    """with_rows(w, b, units): each expert's block gets the rows `units` (flat e * out + j) appended;
    gradients and values equal those of autograd's own cat-and-index (gradcheck in float64, and a
    unit read twice, by two experts, gets both gradients)."""
    from ssmoe_cli.models.layers import with_rows

    torch.manual_seed(0)
    w = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    units = torch.tensor([[5, 9], [0, 11], [5, 2]])  # unit 5 (expert 1, row 1) read by experts 0 and 2
    got_w, got_b = with_rows(w, b, units)
    torch.testing.assert_close(got_w, torch.cat([w, w.reshape(-1, 5)[units]], 1))
    torch.testing.assert_close(got_b, torch.cat([b, b.reshape(-1)[units]], 1))
    assert torch.autograd.gradcheck(lambda w, b: with_rows(w, b, units), (w, b))
    seed = torch.ones(3, 6, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad((with_rows(w, b, units)[0] * seed).sum(), w)
    assert grad.reshape(-1, 5)[5].tolist() == [3.0] * 5 and grad.reshape(-1, 5)[1].tolist() == [1.0] * 5
