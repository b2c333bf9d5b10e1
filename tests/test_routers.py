"""The routers of the MoE field: Switch (Fedus et al. 2021), expert choice (Zhou et al. 2022) and
ST-MoE's router z-loss, against hand-computed values, inside the mixture, and through the CLI."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, run_in_folders, search_runs
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ssmoe_cli.models.gating.base import router_z_loss
from ssmoe_cli.models.gating.expert_choice import ExpertChoiceGate, expert_capacity, expert_choice
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.gating.softmax import SoftmaxGate
from ssmoe_cli.models.gating.switch import SwitchGate
from ssmoe_cli.models.moe import MixtureOfExperts

CONF = Path(__file__).resolve().parents[1] / "conf" / "gating"

pytestmark = pytest.mark.usefixtures("one_thread")


def with_logits(gate: torch.nn.Module, layer: torch.nn.Linear) -> torch.nn.Module:
    """The gate with its router set to the identity: with x of width E, its logits are x itself."""
    with torch.no_grad():
        layer.weight.copy_(torch.eye(layer.out_features, layer.in_features))
        if layer.bias is not None:
            layer.bias.zero_()
    return gate


def softmax_by_hand(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


# -- Switch ------------------------------------------------------------------------------------------
LOGITS = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.5, 2.0]]  # 4 samples, 3 experts


def test_switch_balance_loss_by_hand_k1() -> None:
    gate = SwitchGate(3, 3, k=1, alpha=0.01)
    with_logits(gate, gate.router)
    out = gate.train()(torch.tensor(LOGITS))
    # top-1: experts 0, 1, 0, 2 -> f = (2/4, 1/4, 1/4); P = mean of the rows' softmax.
    f = [0.5, 0.25, 0.25]
    probs = [softmax_by_hand(r) for r in LOGITS]
    p = [sum(r[i] for r in probs) / 4 for i in range(3)]
    expected = 0.01 * 3 * sum(fi * pi for fi, pi in zip(f, p, strict=True))
    assert out.indices.flatten().tolist() == [0, 1, 0, 2]
    assert out.aux["switch_balance"].item() == pytest.approx(expected, rel=1e-6)
    assert set(out.aux) == {"switch_balance"}  # z_loss off by default
    assert torch.equal(out.values, torch.ones(4, 1))  # k = 1: value 1 (straight-through)
    # The loss trains the router through P (f is a count): its gradient reaches W_r.
    out.aux["switch_balance"].backward()
    assert gate.router.weight.grad.abs().sum() > 0


def test_switch_balance_loss_by_hand_k2_counts_pairs() -> None:
    gate = SwitchGate(3, 3, k=2, alpha=0.1)
    with_logits(gate, gate.router)
    logits = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.5, 2.0]]
    out = gate.train()(torch.tensor(logits))
    # top-2 pairs: {0,1} {1,2} {0,2} {2,1} -> 2, 3, 3 of the 8 pairs.
    assert [sorted(r) for r in out.indices.tolist()] == [[0, 1], [1, 2], [0, 2], [1, 2]]
    f = [2 / 8, 3 / 8, 3 / 8]
    probs = [softmax_by_hand(r) for r in logits]
    p = [sum(r[i] for r in probs) / 4 for i in range(3)]
    expected = 0.1 * 3 * sum(fi * pi for fi, pi in zip(f, p, strict=True))
    assert out.aux["switch_balance"].item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(out.weights.sum(1), torch.ones(4))


def test_switch_aux_losses_are_training_only_and_uniform_probabilities_cost_alpha() -> None:
    gate = SwitchGate(3, 4, k=1, alpha=0.01, z_loss=1e-3)
    assert gate.eval()(torch.randn(5, 3)).aux == {}
    # Zero router: P_i = 1/E for every expert, so E * sum_i f_i P_i = sum_i f_i = 1 whatever the
    # routing (here every sample ties and takes expert 0): the loss is alpha.
    with torch.no_grad():
        gate.router.weight.zero_()
    out = gate.train()(torch.randn(8, 3))
    assert out.aux["switch_balance"].item() == pytest.approx(0.01)
    assert out.aux["z_loss"].item() == pytest.approx(1e-3 * math.log(4.0) ** 2)


def test_switch_k1_task_loss_reaches_the_router() -> None:
    torch.manual_seed(0)
    model = MixtureOfExperts(6, 3, SwitchGate(6, 4, k=1, alpha=0.0), num_experts=4, k=1, dispatch="capacity")
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    out = model.train()(x)
    assert out.aux == {}  # alpha = 0, z_loss = 0: nothing but the task loss
    F.cross_entropy(out.logits, y).backward()
    assert model.gate.router.weight.grad.abs().sum() > 0


# -- router z-loss -----------------------------------------------------------------------------------
def test_router_z_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp: log 2 and log 4.
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("make", [SwitchGate, ExpertChoiceGate, NoisyTopKGate, SoftmaxGate])
def test_every_learned_router_adds_the_weighted_z_loss_in_training_only(make: type) -> None:
    gate = make(3, 3, 1, z_loss=0.5)
    router = next(m for m in gate.modules() if isinstance(m, torch.nn.Linear))  # the logit layer comes first
    with_logits(gate, router)
    x = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, math.log(2.0)]])
    expected = 0.5 * (math.log(3.0) ** 2 + math.log(6.0) ** 2) / 2
    kwargs = {"noise": torch.full((2, 3), 5.0)} if make is NoisyTopKGate else {}  # z-loss ignores the noise
    if make is NoisyTopKGate:
        torch.nn.init.normal_(gate.w_noise.weight)
    out = gate.train()(x, **kwargs)
    assert out.aux["z_loss"].item() == pytest.approx(expected, rel=1e-6)
    out.aux["z_loss"].backward()
    assert router.weight.grad.abs().sum() > 0
    assert "z_loss" not in gate.eval()(x).aux
    assert "z_loss" not in make(3, 3, 1).train()(x).aux  # weight 0: off


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True])
def test_bad_loss_weights_are_refused_with_the_key(bad: float) -> None:
    for make in (SwitchGate, ExpertChoiceGate, NoisyTopKGate, SoftmaxGate):
        with pytest.raises(ValueError, match=r"gating\.z_loss="):
            make(3, 3, 1, z_loss=bad)
    with pytest.raises(ValueError, match=r"gating\.alpha="):
        SwitchGate(3, 3, 1, alpha=bad)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True])
def test_bad_capacity_factor_and_init_scale_are_refused_with_the_key(bad: float) -> None:
    with pytest.raises(ValueError, match=r"gating\.capacity_factor="):
        ExpertChoiceGate(3, 3, 1, capacity_factor=bad)
    with pytest.raises(ValueError, match=r"gating\.init_scale="):
        SwitchGate(3, 3, 1, init_scale=bad)


# -- expert choice -----------------------------------------------------------------------------------
def test_expert_capacity() -> None:
    assert expert_capacity(6, 2, 3, 1.0) == 4  # ceil(1 * 6 * 2 / 3)
    assert expert_capacity(5, 1, 4, 1.0) == 2  # ceil(1.25)
    assert expert_capacity(5, 1, 4, 2.0) == 3  # ceil(2.5)
    assert expert_capacity(3, 2, 2, 1.0) == 3  # capped at the batch
    assert expert_capacity(1, 2, 8, 1.0) == 1  # batch 1: every expert takes the sample


def ec_gate(
    scores: list[list[float]], k: int = 1, capacity_factor: float = 1.0
) -> tuple[ExpertChoiceGate, torch.Tensor]:
    """A gate whose router scores on the returned x are exactly `scores` (rows summing to 1):
    identity router, x = log(scores), softmax(log s) = s."""
    e = len(scores[0])
    gate = ExpertChoiceGate(e, e, k, capacity_factor=capacity_factor)
    with_logits(gate, gate.router)
    return gate.eval(), torch.tensor(scores).log()


def test_expert_choice_takes_each_experts_top_c_samples() -> None:
    scores = [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
    gate, x = ec_gate(scores)  # B = 5, E = 3, k = 1: c = ceil(5 / 3) = 2
    out = gate(x)
    # expert 0 takes samples 0, 1; expert 1 takes 3, 1; expert 2 takes 4, 2.
    chosen = [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]]
    s = torch.tensor(scores)
    assert torch.allclose(out.weights, s * torch.tensor(chosen), atol=1e-6)  # raw scores, not renormalised
    assert out.weights.ne(0).sum(0).tolist() == [2, 2, 2]  # every expert exactly c samples
    assert gate.unrouted == 0
    # (B, m), m = 2 (sample 1 got two experts): chosen first by score, then a zero-valued pad.
    assert out.indices.shape == (5, 2)
    assert out.indices[:, 0].tolist() == [0, 0, 2, 1, 2] and out.indices[1, 1].item() == 1
    assert torch.allclose(out.values, out.weights.gather(1, out.indices))
    pads = torch.tensor([[0, 1], [0, 0], [0, 1], [0, 1], [0, 1]], dtype=torch.bool)
    assert torch.all(out.values[pads] == 0) and torch.all(out.values[~pads] > 0)


def test_expert_choice_unrouted_samples_get_their_best_expert_and_are_counted() -> None:
    scores = [[0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.4, 0.3, 0.3], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]]
    gate, x = ec_gate(scores)  # c = 2: e0 takes 1, 0; e1 takes 3, 0; e2 takes 5, 4; sample 2: nobody
    chosen, unrouted = expert_choice(torch.tensor(scores), 2)
    assert unrouted.tolist() == [False, False, True, False, False, False]
    out = gate(x)
    assert gate.unrouted == 1
    assert out.weights[2].tolist() == pytest.approx([0.4, 0.0, 0.0])  # fallback: its best expert, weight s
    assert torch.equal(chosen, out.weights > 0)
    assert out.weights.ne(0).sum(0).tolist() == [3, 2, 2]  # the fallback adds one sample to expert 0
    assert torch.all(out.weights.sum(1) > 0)  # no sample left with all-zero gate values
    gate(x[[0, 1, 3, 4, 5]])  # the count is the last pass's
    assert gate.unrouted == 0


def test_expert_choice_batch_of_one_runs_every_expert_weighted_by_its_score() -> None:
    torch.manual_seed(0)
    gate = ExpertChoiceGate(6, 8, k=2).eval()
    x = torch.randn(1, 6)
    out = gate(x)
    scores = torch.softmax(gate.router(x), dim=1)
    assert out.indices.shape == (1, 8) and sorted(out.indices[0].tolist()) == list(range(8))
    assert torch.allclose(out.weights, scores) and gate.unrouted == 0
    # Batch 2: c = ceil(2 * 2 / 8) = 1, still 8 pairs over 2 samples: 4 experts a sample on average.
    out2 = gate(torch.randn(2, 6))
    assert out2.weights.ne(0).sum().item() == 8
    # In the mixture (auto dispatch picks pairs at batch 1): the dense softmax mixture of all experts.
    model = MixtureOfExperts(6, 3, gate, num_experts=8, k=2).eval()
    dense = torch.einsum("be,ebc->bc", scores, model.experts(x.unsqueeze(0).expand(8, -1, -1)))
    assert torch.allclose(model(x).logits, dense, atol=1e-6)


def test_expert_choice_k1_task_loss_reaches_the_router() -> None:
    torch.manual_seed(0)
    model = MixtureOfExperts(6, 3, ExpertChoiceGate(6, 4, k=1), num_experts=4, k=1, dispatch="capacity")
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    F.cross_entropy(model.train()(x).logits, y).backward()
    assert model.gate.router.weight.grad.abs().sum() > 0


# -- inside the mixture --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: SwitchGate(6, 5, k=1),
        lambda: SwitchGate(6, 5, k=2),
        lambda: ExpertChoiceGate(6, 5, k=1),
        lambda: ExpertChoiceGate(6, 5, k=2, capacity_factor=0.5),  # c = 3 of 13: several unrouted
    ],
)
def test_new_gates_give_the_same_outputs_under_every_dispatch(make) -> None:
    torch.manual_seed(0)
    gate = make()
    x = torch.randn(13, 6) * 3
    outs = {}
    for dispatch in ("dense", "capacity", "pairs"):
        torch.manual_seed(1)  # the same experts each time
        model = MixtureOfExperts(6, 3, gate, num_experts=5, k=gate.k, dispatch=dispatch, expert_hidden=(8,)).eval()
        outs[dispatch] = model(x).logits.detach()
    assert torch.allclose(outs["dense"], outs["capacity"], atol=1e-5)
    assert torch.allclose(outs["dense"], outs["pairs"], atol=1e-5)
    if isinstance(gate, ExpertChoiceGate) and gate.capacity_factor == 0.5:
        assert gate.unrouted > 0  # the fallback's pairs go through every dispatch too


def test_router_accounting_is_the_router_weights() -> None:
    for gate in (SwitchGate(10, 4, k=1), ExpertChoiceGate(10, 4, k=2)):
        assert gate.active_params() == gate.active_macs() == 40
        gate.router.set_mask(torch.zeros(4, 10, dtype=torch.bool).index_fill_(1, torch.tensor([0, 1]), True))
        assert gate.active_params() == gate.active_macs() == 8


@pytest.mark.parametrize(("name", "cls"), [("switch", SwitchGate), ("expert_choice", ExpertChoiceGate)])
def test_configs_instantiate_with_the_constructor_defaults(name: str, cls: type) -> None:
    cfg = OmegaConf.create({"data": {"in_features": 12}, "model": {"num_experts": 4, "k": 2}})
    cfg.gating = OmegaConf.load(CONF / f"{name}.yaml")
    gate = instantiate(cfg.gating)
    assert isinstance(gate, cls) and gate.k == 2
    params = inspect.signature(cls.__init__).parameters
    listed = set(cfg.gating) - {"_target_"}
    assert listed == set(params) - {"self"}
    for key in listed - {"in_features", "num_experts", "k"}:
        assert OmegaConf.to_object(cfg.gating)[key] == params[key].default, key
    for other in ("noisy_topk", "softmax"):
        assert OmegaConf.load(CONF / f"{other}.yaml").z_loss == 0.0


# -- through the CLI -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_switch_and_expert_choice_train_through_the_cli_and_log_their_losses(tmp_path, store_template) -> None:
    common = ["model=moe", "data=digits", "threads=1", *FAST]
    done = run_in_folders(
        tmp_path,
        {
            "switch": ["train", *common, "gating=switch", "model.k=1", "model.capacity_factor=1.25"],
            "ec": ["train", *common, "gating=expert_choice", "model.k=2", "gating.z_loss=0.001"],
        },
        store=store_template,
    )
    for name, (_, proc) in done.items():
        assert proc.returncode == 0, f"{name}: {proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
    (switch,) = search_runs(done["switch"][0]).to_dict("records")
    (ec,) = search_runs(done["ec"][0]).to_dict("records")
    assert switch["status"] == ec["status"] == "FINISHED"
    assert switch["tags.gating"] == "switch" and ec["tags.gating"] == "expert_choice"
    # alpha * E * sum_i f_i P_i lies in (0, alpha * E]: E = 8 experts (arch=lenet), alpha = 0.01.
    assert 0 < switch["metrics.train/aux/switch_balance"] <= 0.01 * 8
    assert ec["metrics.train/aux/z_loss"] > 0 and "metrics.train/aux/switch_balance" not in ec
    assert 0 < ec["metrics.test/acc"] <= 1 and 0 < switch["metrics.test/acc"] <= 1
