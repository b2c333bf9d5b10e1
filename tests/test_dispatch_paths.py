"""Every dispatch path of the mixture computes the reference (dense) dispatch's function, forward and
backward, on random routings: empty experts, batch 1, E = 64, k = 1, 2, 4, masks and routes; and
capacity drops renormalise the kept gate values, with the documented fallback for a sample whose
pairs were all dropped."""

from __future__ import annotations

import pytest
import torch

from ssmoe_cli.models.gating.base import Gate, GateOutput
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.models.topology.small_world import SmallWorld

PATHS = ("capacity", "pairs", "grouped", "sorted")


class DrawnGate(Gate):
    """Routes each sample to k distinct experts drawn from `allowed` (others stay empty), with random
    gate values that sum to 1; the same draw for the same batch size (a seeded generator per call)."""

    def __init__(self, num_experts: int, k: int, allowed: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.num_experts, self.k, self.seed = num_experts, k, seed
        self.allowed = allowed or num_experts

    def forward(self, x: torch.Tensor) -> GateOutput:
        g = torch.Generator().manual_seed(self.seed)
        indices = torch.rand(len(x), self.allowed, generator=g).argsort(1)[:, : self.k]
        values = torch.rand(len(x), self.k, generator=g).softmax(1).sort(1, descending=True).values
        weights = torch.zeros(len(x), self.num_experts).scatter(1, indices, values)
        return GateOutput(weights, indices, values, {}, None)

    def active_params(self) -> int:
        return 0

    def active_macs(self) -> int:
        return 0


def mixture(num_experts: int, k: int, routes: bool, masked: bool, allowed: int | None = None, **kw):
    torch.manual_seed(0)
    topology = SmallWorld(degree=2, rewire_p=0.3, fan_out=3) if routes else None
    model = MixtureOfExperts(
        12, 5, DrawnGate(num_experts, k, allowed), topology, num_experts=num_experts, k=k, expert_hidden=[16], **kw
    )
    if masked:
        for layer in model.prunable_layers().values():
            layer.set_mask(layer.mask & (torch.rand(layer.mask.shape) > 0.6))
    return model


@pytest.mark.parametrize(
    ("num_experts", "k", "batch", "allowed"),
    [(8, 1, 37, None), (8, 2, 37, 3), (8, 4, 1, None), (64, 2, 50, None), (64, 4, 3, 40), (64, 1, 1, None)],
)
@pytest.mark.parametrize("routes", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_every_path_computes_the_reference_dispatch(num_experts, k, batch, allowed, routes, masked):
    model = mixture(num_experts, k, routes, masked, allowed)
    x = torch.randn(batch, 12)
    g = model.gate(x)
    if allowed:
        assert len(g.indices.unique()) <= allowed < num_experts  # some experts are empty
    reference = model.combine_dense(x, g.weights)
    outputs = {
        "capacity": model.combine_capacity(x, g.indices, g.values),
        "pairs": model.combine_pairs(x, g.indices, g.values),
        "grouped": model.combine_grouped(x, g.indices, g.values),
        "sorted": model.combine_sorted(x, g.indices, g.values),
    }
    for path, out in outputs.items():
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5, msg=f"{path} differs")
    # Backward: every path gives the experts the reference's gradients.
    grads = {}
    for path in ("dense", *PATHS):
        model.zero_grad()
        model.dispatch = path
        model(x).logits.square().sum().backward()
        grads[path] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for path in PATHS:
        for got, want in zip(grads[path], grads["dense"], strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=f"{path} gradient differs")


def test_inference_reuses_the_masked_weight_until_it_changes():
    model = mixture(8, 2, routes=True, masked=True).eval()
    layer = model.layers[0]
    with torch.no_grad():
        first = layer.masked_weight()
        assert layer.masked_weight() is first  # cached: no E x out x in product per call
        layer.weight.add_(1.0)  # an optimizer step or a load: the version counter moves
        assert torch.equal(layer.masked_weight(), layer.weight * layer.mask)
    assert layer.masked_weight().requires_grad  # with autograd: always the live product


def test_capacity_drops_renormalise_kept_gate_values():
    # 4 experts, k = 2, capacity_factor 0.5 -> ceil(0.5 * 6 * 2 / 4) = 2 slots per expert.
    model = mixture(4, 2, routes=False, masked=False, capacity_factor=0.5).eval()
    indices = torch.tensor([[0, 1], [0, 1], [0, 2], [3, 2], [0, 1], [2, 0]])
    values = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.9, 0.1], [0.5, 0.5], [0.8, 0.2], [0.55, 0.45]])
    x = torch.randn(6, 12)
    out = model.combine_capacity(x, indices, values)
    single = model.experts(x.unsqueeze(0).expand(4, -1, -1))  # (E, B, C): expert e on every sample
    # Expert 0 takes samples 0 and 1 (its pairs at samples 2, 4, 5 are dropped), expert 1 samples 0
    # and 1 (sample 4's dropped), expert 2 samples 2 and 3 (sample 5's dropped), expert 3 sample 3.
    want = torch.stack(
        [
            0.7 * single[0, 0] + 0.3 * single[1, 0],
            0.6 * single[0, 1] + 0.4 * single[1, 1],
            1.0 * single[2, 2],  # kept 0.1 renormalised to the sample's whole mass
            0.5 * single[3, 3] + 0.5 * single[2, 3],
            1.0 * single[0, 4],  # both pairs dropped: fallback, top-1 expert (0) with weight 1
            1.0 * single[2, 5],  # both dropped: top-1 is expert 2
        ]
    )
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_drop_counts_follow_the_capacity_and_the_dispatch():
    model = mixture(8, 2, routes=False, masked=False, allowed=2, capacity_factor=1.0).eval()
    x = torch.randn(40, 12)
    # Every sample goes to the same 2 experts: 80 pairs, capacity ceil(80 / 8) = 10 per expert.
    assert model.routing().drop_counts(x) == (80, 60, 30)
    assert model.routing().drop_counts(x[:3]) == (6, 0, 0)  # 6 pairs < 8 experts: dense dispatch, no drops
    model.capacity_factor = None
    assert model.routing().drop_counts(x) == (80, 0, 0)


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("few", [False, True])
@pytest.mark.parametrize("one", [False, True])
def test_exported_csr_expert_layers_keep_every_path_exact(full, few, one):
    """Every kernel choice of the CSR expert layers, on every dispatch path, at batch 29 (full passes),
    3 and 1 (few rows per expert in a dense pass; grouped and pairs): the reference's outputs. Layer 0
    runs fused with the routes wherever its pass at that row count is dense, apart where it is CSR."""
    from ssmoe_cli.export import CSRExpertLinear, kernels

    model = mixture(8, 2, routes=True, masked=True).eval()
    x = torch.randn(29, 12)
    with torch.no_grad():
        references = {b: model.combine_dense(x[:b], model.gate(x[:b]).weights) for b in (29, 3, 1)}
        for i, layer in enumerate(model.layers):
            model.layers[i] = CSRExpertLinear(layer, full=full, one=one, few=few)
        model.route = CSRExpertLinear(model.route, full=full, one=one, few=few)
        for path in ("dense", "capacity", "pairs", "grouped", "sorted"):
            model.dispatch = path
            for b, reference in references.items():
                torch.testing.assert_close(model(x[:b]).logits, reference, atol=1e-5, rtol=1e-5, msg=f"{path} b{b}")
    name = {True: "csr", False: "dense"}
    want = f"full={name[full]} few={name[few]} one={name[one]}"
    assert kernels(model) == {"layers.0": want, "layers.1": want, "route": want}
    assert model._fusable(29) is not full and model._fusable(1) is not few


def test_whole_model_check_keeps_csr_only_for_the_uses_where_the_model_is_faster(monkeypatch):
    """refine_in_context times the whole model with and without each use's CSR choices: full passes
    on the batch, few-row passes and single experts on its first row. Here the verdict (patched in)
    says CSR wins at batch 1 only: full passes go dense, few and one stay CSR; outputs unchanged."""
    import importlib

    K = importlib.import_module("ssmoe_cli.export.kernels")  # the package's `kernels` is a function

    model = mixture(8, 2, routes=True, masked=True).eval()
    x = torch.randn(29, 12)
    with torch.no_grad():
        reference = model(x).logits
        for i, layer in enumerate(model.layers):
            model.layers[i] = K.CSRExpertLinear(layer)  # every use on CSR
        model.route = K.CSRExpertLinear(model.route)
    seen: list[tuple[int, bool, bool]] = []

    def verdict(sparse, dense, batch, min_speedup):
        with torch.no_grad():
            torch.testing.assert_close(sparse(batch).logits, dense(batch).logits, atol=1e-5, rtol=1e-5)
        seen.append((len(batch), model.layers[0].full, model.layers[0].few))
        return len(batch) == 1

    monkeypatch.setattr(K, "_sparse_faster", verdict)
    K.refine_in_context(model, x)
    assert [b for b, _, _ in seen] == [29, 1]
    assert seen[0][1] is False  # the last call of the pair ran with the choices off
    assert all(not m.full and m.few and m.one for m in (*model.layers, model.route))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference, atol=1e-5, rtol=1e-5)


def test_use_sparse_kernels_with_inputs_runs_the_whole_model_check():
    """Unpatched, on a real (tiny) model: whatever the timings decide, the decisions agree with the
    layers' kernels and the outputs with the dense model's."""
    from ssmoe_cli.export import kernels, use_sparse_kernels

    model = mixture(8, 2, routes=True, masked=True).eval()
    x = torch.randn(29, 12)
    with torch.no_grad():
        reference = model(x).logits
        decisions = use_sparse_kernels(model, batch_size=29, min_sparsity=0.0, inputs=x)
        torch.testing.assert_close(model(x).logits, reference, atol=1e-5, rtol=1e-5)
    ran = kernels(model)
    for name, csr in decisions.items():
        assert csr == ("csr" in ran[name]), name


@pytest.mark.parametrize("routes", [False, True])
def test_evaluation_after_an_optimizer_step_sees_the_new_weights(routes):
    """Inference caches the masked weights (and layer 0 fused with the routes) by the weights' version
    counters: a step of the optimizer must invalidate them. (Fused optimizer kernels update in place
    without bumping the counters; ClassifierModule bumps them: tests/test_module.py.)"""
    model = mixture(8, 2, routes, masked=True)
    x, y = torch.randn(40, 12), torch.randint(0, 5, (40,))
    model.eval()
    with torch.no_grad():
        before = model(x).logits  # fills the caches
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(x).logits, y).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        cached = model(x).logits
    fresh = model(x).logits.detach()  # with autograd on, nothing cached is used: computed from the weights
    assert not torch.allclose(before, fresh)  # the step changed the function
    torch.testing.assert_close(cached, fresh)


def test_sorted_dispatch_leaves_a_hooked_expert_layer_its_call():
    """prune=obs collects layer inputs through forward hooks; the sorted path runs the layers' weights
    itself, so with a hooked expert layer it hands the batch to capacity (the hook sees its call)."""
    model = mixture(8, 2, routes=True, masked=True).eval()
    model.dispatch = "sorted"
    x = torch.randn(40, 12)
    with torch.no_grad():
        reference = model(x).logits
        seen = []
        handle = model.layers[1].register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
        torch.testing.assert_close(model(x).logits, reference, atol=1e-5, rtol=1e-5)
        handle.remove()
    assert len(seen) == 1 and seen[0][0] == 8  # one call, on the (E, capacity, hidden) buffers
