"""Gates: the GateOutput contract, SGMoE's losses by hand, and the parametric t-SNE gate's map."""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.manifold import trustworthiness

from ssmoe_cli.models.gating import GateOutput, cv_squared, topk_softmax
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.gating.ptsne import PTSNEGate, grid, kmeans
from ssmoe_cli.models.gating.softmax import SoftmaxGate
from ssmoe_cli.models.gating.tsne import kl_divergence

CONF = Path(__file__).resolve().parents[1] / "conf" / "gating"


pytestmark = pytest.mark.usefixtures("one_thread")


def clusters(n_per: int, n_clusters: int, dim: int, spread: float = 10.0, seed: int = 0):
    """Well-separated isotropic Gaussian clusters and their labels."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_clusters, dim, generator=g) * spread
    x = means.repeat_interleave(n_per, 0) + torch.randn(n_per * n_clusters, dim, generator=g)
    return x, torch.arange(n_clusters).repeat_interleave(n_per)


def small_ptsne(d: int, e: int, k: int, **kw) -> PTSNEGate:
    defaults = dict(hidden=(16,), pretrain_epochs=30, pretrain_lr=1e-2, tsne_batch_size=100, perplexity=10.0)
    return PTSNEGate(d, e, k, **{**defaults, **kw})


def prepared_ptsne(d: int, e: int, k: int, **kw) -> tuple[PTSNEGate, torch.Tensor]:
    torch.manual_seed(0)
    x, _ = clusters(25, e, d)
    gate = small_ptsne(d, e, k, **kw)
    gate.prepare(x, torch.Generator().manual_seed(0))
    return gate, x


def all_gates(d: int, e: int, k: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    noisy = NoisyTopKGate(d, e, k)
    torch.nn.init.normal_(noisy.w_gate.weight)  # away from the all-zero start: no ties
    torch.nn.init.normal_(noisy.w_noise.weight)
    return [noisy, SoftmaxGate(d, e, k), prepared_ptsne(d, e, k)[0]]


# -- the GateOutput contract, every gate -----------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("training", [True, False])
def test_weights_rows_sum_to_one_and_zero_outside_indices(k: int, training: bool) -> None:
    x = torch.randn(40, 6)
    for gate in all_gates(6, 4, k):
        gate.train(training)
        out = gate(x)
        assert isinstance(out, GateOutput)
        kk = 4 if isinstance(gate, SoftmaxGate) else k
        assert out.indices.shape == out.values.shape == (40, kk) and out.indices.dtype == torch.long
        assert torch.allclose(out.weights.sum(1), torch.ones(40), atol=1e-6)
        outside = torch.ones_like(out.weights, dtype=torch.bool).scatter(1, out.indices, False)
        assert torch.all(out.weights[outside] == 0)
        assert torch.equal(out.values, out.weights.gather(1, out.indices))
        assert torch.all(out.values[:, :-1] >= out.values[:, 1:])  # sorted descending
        assert all(v.dim() == 0 and torch.isfinite(v) for v in out.aux.values())
        if isinstance(gate, PTSNEGate):
            assert out.embedding is not None and out.embedding.shape == (40, 2)
            assert gate.positions.shape == (4, 2)
        else:
            assert out.embedding is None and gate.positions is None


def test_topk_softmax_by_hand() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    w, idx, val = topk_softmax(logits, 2)
    e = math.exp(1.0)
    assert idx.tolist() == [[1, 2]]
    assert torch.allclose(val, torch.tensor([[e / (e + 1), 1 / (e + 1)]]))
    assert torch.allclose(w, torch.tensor([[0.0, e / (e + 1), 1 / (e + 1), 0.0]]))
    w1, _, val1 = topk_softmax(logits, 1)
    assert torch.equal(val1, torch.ones(1, 1)) and torch.equal(w1, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_k1_gate_value_passes_gradient_of_full_softmax() -> None:
    # Straight-through: forward value 1, gradient d p_top / d logits (Switch Transformer's).
    logits = torch.tensor([[0.5, 1.5, -0.3]], requires_grad=True)
    _, _, val = topk_softmax(logits, 1)
    val.sum().backward()
    p = torch.softmax(logits.detach(), 1)[0]
    expected = -p[1] * p
    expected[1] = p[1] * (1 - p[1])
    assert torch.allclose(logits.grad[0], expected)


# -- SGMoE (noisy top-k) -------------------------------------------------------------------------
def phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def pvar_over_mean_sq(v: list[float]) -> float:
    mean = sum(v) / len(v)
    return sum((a - mean) ** 2 for a in v) / len(v) / mean**2


def test_cv_squared_divides_by_mean_squared() -> None:
    # [1, 2, 3]: population variance 2/3, mean 2 -> CV^2 = 1/6 (dividing by the mean gives 1/3).
    assert math.isclose(float(cv_squared(torch.tensor([1.0, 2.0, 3.0]))), 1 / 6, rel_tol=1e-6)
    assert float(cv_squared(torch.tensor([5.0]))) == 0.0
    assert float(cv_squared(torch.zeros(4))) == 0.0  # no 0/0
    # float64 stays float64 (the diagnostics' exact value), and the loss form is differentiable.
    exact = cv_squared(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert exact.dtype == torch.float64 and abs(float(exact) - 1 / 6) < 1e-15
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    cv_squared(x).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_noisy_topk_importance_and_load_by_hand() -> None:
    clean = [[1.0, 0.5, -0.5], [0.0, 2.0, 1.0]]
    raw = [[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]]
    noise = [[0.1, -0.2, 0.3], [-0.5, 0.0, 0.2]]
    gate = NoisyTopKGate(2, 3, k=2, w_importance=0.5, w_load=0.25)
    with torch.no_grad():  # x = I, so x W^T has the columns of W^T as rows: W = clean^T
        gate.w_gate.weight.copy_(torch.tensor(clean).T)
        gate.w_noise.weight.copy_(torch.tensor(raw).T)
    out = gate.train()(torch.eye(2), noise=torch.tensor(noise))

    importance, load = [0.0] * 3, [0.0] * 3
    for c, r, n in zip(clean, raw, noise, strict=True):
        std = [softplus(v) + 1e-2 for v in r]
        h = [ci + ni * si for ci, ni, si in zip(c, n, std, strict=True)]
        order = sorted(range(3), key=lambda i: -h[i])
        top, third = order[:2], order[2]
        z = [math.exp(h[i]) for i in top]
        for i, zi in zip(top, z, strict=True):
            importance[i] += zi / sum(z)
        for i in range(3):
            # threshold: the (k+1)-th largest H if i is in the top k, else the k-th largest
            threshold = h[third] if i in top else h[order[1]]
            load[i] += phi((c[i] - threshold) / std[i])
    assert out.indices.tolist() == [[0, 1], [1, 2]]  # H row 0: [1.07, 0.36, -0.29]; row 1: [-0.66, 2, 1.14]
    assert torch.allclose(out.weights.sum(0), torch.tensor(importance))
    assert math.isclose(out.aux["importance"].item(), 0.5 * pvar_over_mean_sq(importance), rel_tol=1e-5)
    assert math.isclose(out.aux["load"].item(), 0.25 * pvar_over_mean_sq(load), rel_tol=1e-5)
    out.aux["load"].backward()  # the smooth load estimate trains both W_g and W_noise
    assert gate.w_gate.weight.grad.abs().sum() > 0 and gate.w_noise.weight.grad.abs().sum() > 0


def test_noisy_topk_k1_task_loss_reaches_w_gate() -> None:
    torch.manual_seed(0)
    x, target = torch.randn(16, 5), torch.randn(16, 3)
    for init in ("zero", "random"):
        gate = NoisyTopKGate(5, 3, k=1, w_importance=0.0, w_load=0.0)
        if init == "random":
            torch.nn.init.normal_(gate.w_gate.weight)
        for training in (True, False):
            gate.train(training).zero_grad()
            out = gate(x)
            (out.weights * target).sum().backward()  # a stand-in for sum_e G_e E_e(x) -> loss
            assert gate.w_gate.weight.grad is not None
            assert gate.w_gate.weight.grad.abs().sum() > 0, (init, training)


def test_noisy_topk_eval_and_noiseless_are_finite() -> None:
    x = torch.randn(32, 4)
    for gate in (NoisyTopKGate(4, 5, k=2), NoisyTopKGate(4, 5, k=2, noisy=False, noise_epsilon=0.0)):
        # W_noise = 0 (its start) and W_g = 0: all logits tie, no noise at eval.
        for training in (False, True):
            out = gate.train(training)(x)
            assert torch.isfinite(out.weights).all()
            assert all(torch.isfinite(v) for v in out.aux.values())
    gate = NoisyTopKGate(4, 5, k=2).eval()
    torch.nn.init.normal_(gate.w_gate.weight)
    out = gate(x)
    counts = torch.bincount(out.indices.flatten(), minlength=5).float()
    assert math.isclose(out.aux["load"].item(), 0.01 * float(cv_squared(counts)), rel_tol=1e-5)
    torch.manual_seed(1)
    assert torch.equal(gate(x).weights, out.weights)  # deterministic: no noise at eval


def test_noisy_topk_k_equals_num_experts() -> None:
    gate = NoisyTopKGate(4, 3, k=3).train()
    torch.nn.init.normal_(gate.w_gate.weight)
    torch.nn.init.normal_(gate.w_noise.weight)
    out = gate(torch.randn(10, 4))
    assert out.indices.shape == (10, 3)
    assert torch.allclose(out.weights.sum(1), torch.ones(10), atol=1e-6)
    assert out.aux["load"].item() == 0.0  # every expert sees every sample
    assert torch.isfinite(out.aux["importance"])


def test_noisy_topk_accounting_counts_w_gate_only_and_respects_masks() -> None:
    gate = NoisyTopKGate(10, 4, k=2)
    torch.nn.init.normal_(gate.w_gate.weight)
    assert gate.active_params() == gate.active_macs() == 40
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[:, :5] = False
    gate.w_gate.set_mask(mask)
    assert gate.active_params() == gate.active_macs() == 20


def test_softmax_gate_is_dense() -> None:
    gate = SoftmaxGate(6, 5, k=2)
    assert gate.k == 5
    x = torch.randn(8, 6)
    out = gate(x)
    assert torch.allclose(out.weights, torch.softmax(gate.linear(x), 1))
    assert sorted(out.indices[0].tolist()) == list(range(5)) and out.aux == {}
    assert gate.active_params() == 6 * 5 + 5 and gate.active_macs() == 30


# -- parametric t-SNE gate -------------------------------------------------------------------------
def test_ptsne_map_is_trustworthy_and_routes_clusters_to_their_experts() -> None:
    torch.manual_seed(0)
    x, labels = clusters(50, 6, 30)
    gate = PTSNEGate(
        30,
        6,
        k=1,
        hidden=(32,),
        pretrain_epochs=200,
        pretrain_lr=1e-2,
        tsne_batch_size=300,
        perplexity=15.0,
        centres="kmeans",
    )
    gate.prepare(x, torch.Generator().manual_seed(0))
    y = gate.embed(x)
    assert trustworthiness(x.numpy(), y.numpy(), n_neighbors=12) >= 0.95
    top = gate.eval()(x).indices[:, 0]
    own = []
    for c in range(6):
        routed = top[labels == c]
        expert = int(routed.mode().values)
        assert float((routed == expert).float().mean()) > 0.8
        own.append(expert)
    assert len(set(own)) == 6  # each cluster has an expert of its own


def test_ptsne_prepare_is_deterministic() -> None:
    a, x = prepared_ptsne(8, 3, 1)
    b, _ = prepared_ptsne(8, 3, 1)
    assert torch.equal(a.centres, b.centres) and torch.equal(a.temperature, b.temperature)
    assert torch.equal(a.embed(x), b.embed(x))


def test_ptsne_learned_centres_get_gradients() -> None:
    for k in (1, 2):
        gate, x = prepared_ptsne(8, 3, k, centres="learned")
        assert isinstance(gate.centres, torch.nn.Parameter)
        target = torch.randn(len(x), 3)
        (gate(x).weights * target).sum().backward()
        assert gate.centres.grad is not None and gate.centres.grad.abs().sum() > 0, k


def test_ptsne_freeze_and_schedules() -> None:
    frozen, x = prepared_ptsne(8, 3, 2, schedule="pretrain", freeze=True)
    assert not any(p.requires_grad for p in frozen.net.parameters())
    assert frozen.train()(x).aux == {}
    tuned, _ = prepared_ptsne(8, 3, 2, schedule="pretrain", freeze=False)
    assert all(p.requires_grad for p in tuned.net.parameters())

    joint, _ = prepared_ptsne(8, 3, 2, schedule="joint", tsne_weight=0.5, pretrain_epochs=0, tsne_batch_size=25)
    assert all(p.requires_grad for p in joint.net.parameters())
    fixed = joint._batches
    expected = sorted(
        round(0.5 * kl_divergence(p, joint.net(joint._x_tsne[idx])).item(), 5)
        for idx, p in zip(fixed.indices, fixed.p, strict=True)
    )
    seen = []
    for _ in range(2 * len(fixed)):  # two passes over the 3 fixed batches, no optimizer step
        kl = joint.train()(x[:10]).aux["tsne_kl"]
        assert kl.dim() == 0 and kl.item() > 0
        joint.zero_grad()
        kl.backward()  # the KL trains f
        assert joint.net[0].weight.grad.abs().sum() > 0
        seen.append(round(kl.item(), 5))
    # Each pass visits every fixed batch once, with its own P (in some order).
    assert sorted(seen[:3]) == sorted(seen[3:]) == expected
    assert joint.eval()(x).aux == {}


def test_ptsne_state_dict_and_deepcopy() -> None:
    gate, x = prepared_ptsne(8, 3, 2, schedule="joint", centres="learned")
    twin = copy.deepcopy(gate)  # e.g. a best-model copy: must not choke on the t-SNE batches
    assert torch.equal(twin.train()(x).aux["tsne_kl"], gate.train()(x).aux["tsne_kl"])
    fresh = small_ptsne(8, 3, 2, schedule="joint", centres="learned")
    fresh.load_state_dict(gate.state_dict())  # centres and temperature travel with the weights
    assert torch.equal(fresh.eval()(x).weights, gate.eval()(x).weights)


def test_ptsne_centre_placement() -> None:
    y = torch.rand(400, 2) * torch.tensor([8.0, 2.0])
    c = grid(y, 8)
    assert c.shape == (8, 2) and len({tuple(r) for r in c.tolist()}) == 8
    assert torch.all(c >= y.min(0).values) and torch.all(c <= y.max(0).values)
    blobs = torch.cat([torch.randn(50, 2) * 0.1 + torch.tensor(m) for m in ([0, 0], [5, 5], [-5, 5])])
    km = kmeans(blobs, 3, torch.Generator().manual_seed(0))
    found = sorted(tuple(round(v) for v in r) for r in km.tolist())
    assert found == [(-5, 5), (0, 0), (5, 5)]
    gate, _ = prepared_ptsne(8, 4, 1, centres="grid")
    assert gate.positions.shape == (4, 2) and not gate.positions.requires_grad


def test_ptsne_auto_temperature_follows_map_scale() -> None:
    gate, x = prepared_ptsne(8, 3, 2)
    before = gate(x).values
    with torch.no_grad():  # scale the whole map by 10: t-SNE's scale is arbitrary
        gate.net[-1].weight.mul_(10)
        gate.net[-1].bias.mul_(10)
    gate.place_centres(gate.embed(x), torch.Generator().manual_seed(0))
    assert torch.allclose(gate(x).values, before, atol=1e-4)  # (k-means may renumber the centres)


def test_ptsne_accounting() -> None:
    gate = small_ptsne(20, 4, 1)
    # f, the 4 x 2 centres and the temperature: every sample reads all of them (as params/nonzero counts).
    assert gate.active_params() == (20 * 16 + 16) + (16 * 2 + 2) + 4 * 2 + 1
    assert gate.active_macs() == 20 * 16 + 16 * 2 + 2 * 4
    gate.net[0].set_mask(torch.zeros(16, 20, dtype=torch.bool))
    assert gate.active_macs() == 16 * 2 + 2 * 4


# -- Hydra configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "cls"), [("ptsne", PTSNEGate), ("noisy_topk", NoisyTopKGate), ("softmax", SoftmaxGate)]
)
def test_configs_instantiate_with_the_constructor_defaults(name: str, cls: type) -> None:
    cfg = OmegaConf.create({"data": {"in_features": 12}, "model": {"num_experts": 4, "k": 2}})
    cfg.gating = OmegaConf.load(CONF / f"{name}.yaml")
    gate = instantiate(cfg.gating)
    assert isinstance(gate, cls)
    # Every constructor argument is in the yaml, with the constructor's default.
    params = inspect.signature(cls.__init__).parameters
    listed = set(cfg.gating) - {"_target_"}
    assert listed == set(params) - {"self"}
    for key in listed - {"in_features", "num_experts", "k"}:
        default = params[key].default
        value = OmegaConf.to_object(cfg.gating)[key]
        assert value == (list(default) if isinstance(default, tuple) else default), key
