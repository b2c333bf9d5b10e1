"""Optimal Brain Surgeon (prune=obs): one step against the closed form computed by hand, the batched
greedy against a naive float64 OBS that re-inverts H at every step, exact counts, the correction's
benefit over magnitude masking, per-expert Hessians of a mixture, and CLI runs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, errors, run_in_folders, search_runs
from torch import nn

from ssmoe_cli.models.base import routing_of
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.layers import ExpertLinear, MaskedLinear
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.models.topology.small_world import SmallWorld
from ssmoe_cli.prune import OBSPruning, collect_hessians, magnitude_prune, obs_prune, target_layers
from ssmoe_cli.prune.masks import allocate
from ssmoe_cli.prune.surgeon import dampen, keep_after, row_counts, surgeon_order, surgeon_weights

# H = 2 X X^T / N of the hand example and its inverse, by hand: [[4, 2], [2, 4]]^-1 = [[1/3, -1/6], [-1/6, 1/3]].
H = torch.tensor([[4.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
W = torch.tensor([[1.0, 0.3, -0.8]])
# s_q = w_q^2 / (2 [H^-1]_qq): 1 / (2/3) = 1.5, 0.09 / (2/3) = 0.135, 0.64 / 1 = 0.64 -> q = 1 goes;
# delta = -(0.3 / (1/3)) * [-1/6, 1/3, 0] = [0.15, -0.3, 0]; 1/2 delta^T H delta = 0.135 = s_1.
SALIENCY = [1.5, 0.135, 0.64]
CORRECTED = [1.15, 0.0, -0.8]


def hand_data() -> torch.Tensor:
    """Three samples whose H = (2/N) X^T X is exactly the hand matrix H (X = sqrt(N) L^T, L L^T = H / 2)."""
    return math.sqrt(3) * torch.linalg.cholesky(H / 2).T.float()


def test_one_obs_step_equals_the_hand_computed_closed_form():
    group = torch.zeros(1, dtype=torch.long)
    order, losses, saliency = surgeon_order(W, torch.ones(1, 3, dtype=torch.bool), H.unsqueeze(0), group)
    assert saliency[0].tolist() == pytest.approx(SALIENCY, rel=1e-5)
    assert order[0, 0] == 1 and losses[0, 0] == pytest.approx(0.135, rel=1e-5)
    corrected = surgeon_weights(W, torch.tensor([[True, False, True]]), H.unsqueeze(0), group)
    assert corrected[0].tolist() == pytest.approx(CORRECTED, rel=1e-6)


def test_obs_prune_on_a_layer_corrects_the_weights_and_the_loss_is_the_saliency():
    """Through the model: the Hessian from the layer's inputs, damp=0; the layer-wise loss
    (1/N) sum_i ||(W' - W) x_i||^2 rises by exactly w_q^2 / (2 [H^-1]_qq) (scaling 1 with H = 2 X X^T / N)."""
    model = nn.Sequential(MaskedLinear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(W)
    x = hand_data()
    assert collect_hessians(model, target_layers(model, ["hidden"]), [(x, None)])["0"][0] == pytest.approx(H)
    before = model(x).detach()
    obs_prune(model, [(x, None)], 1 / 3, ["hidden"], damp=0.0)
    assert model[0].mask[0].tolist() == [True, False, True]
    assert model[0].weight[0].tolist() == pytest.approx(CORRECTED, rel=1e-5)
    increase = (model(x).detach() - before).square().sum(1).mean()
    assert float(increase) == pytest.approx(SALIENCY[1], rel=1e-4)


def naive_obs(
    w: torch.Tensor, keep: torch.Tensor, h: torch.Tensor, steps: int
) -> tuple[list[int], list[float], torch.Tensor]:
    """Textbook OBS on one row in float64: H^-1 of the survivors re-inverted at every step."""
    w, alive = w.double().clone(), keep.clone()
    order, losses = [], []
    for _ in range(steps):
        idx = alive.nonzero().squeeze(1)
        hinv = torch.linalg.inv(h[idx][:, idx])
        scores = w[idx].square() / hinv.diagonal()
        j = int(scores.argmin())
        q = int(idx[j])
        order.append(q)
        losses.append(float(scores[j] / 2))
        w[idx] -= w[q] / hinv[j, j] * hinv[:, j]
        w[q], alive[q] = 0.0, False
    return order, losses, w


def test_batched_greedy_equals_textbook_obs_with_masks_and_dead_inputs():
    """Rows with earlier masks (their columns eliminated first) and an input that is always 0."""
    torch.manual_seed(0)
    d, rows, n = 12, 5, 40
    x = torch.randn(n, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64)  # correlated inputs
    x[:, 3] = 0.0
    h = dampen((2 / n * x.T @ x).unsqueeze(0), 0.01)
    keep = torch.rand(rows, d) > 0.3
    w = torch.randn(rows, d) * keep
    group = torch.zeros(rows, dtype=torch.long)
    order, losses, _ = surgeon_order(w, keep, h, group, per_update=1)
    counts = row_counts(losses, 20)
    assert int(counts.sum()) == 20
    corrected = surgeon_weights(w, keep_after(keep, order, counts), h, group)
    for r in range(rows):
        alive = int(keep[r].sum())
        ref_order, ref_losses, _ = naive_obs(w[r], keep[r], h[0], alive)
        assert order[r, :alive].tolist() == ref_order and torch.all(order[r, alive:] == -1)
        assert losses[r, :alive].tolist() == pytest.approx(ref_losses, rel=1e-3, abs=1e-7)
        _, _, ref_w = naive_obs(w[r], keep[r], h[0], int(counts[r]))
        assert torch.allclose(corrected[r].double(), ref_w, rtol=1e-4, atol=1e-6)
    # The layer-wise loss of the set removed is the sum of its steps' losses (a row never costs less).
    steps = torch.arange(d).unsqueeze(0) < counts.unsqueeze(1)
    delta = (corrected - w).double()
    assert float(0.5 * torch.einsum("ri,ij,rj->", delta, h[0], delta)) == pytest.approx(
        float(losses[steps].sum()), rel=1e-3
    )


def test_several_removals_per_update_keep_the_losses_exact_and_close_to_one_at_a_time():
    """per_update=4: the picks leave in exact OBS order among themselves, H^-1 gets one rank-4 update;
    the recorded step losses still add up to the removed set's true loss, which stays near the
    one-at-a-time greedy's."""
    torch.manual_seed(3)
    d, rows, n = 32, 6, 200
    x = torch.randn(n, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64)
    h = dampen((2 / n * x.T @ x).unsqueeze(0), 0.01)
    keep = torch.rand(rows, d) > 0.2
    w = torch.randn(rows, d) * keep
    group = torch.zeros(rows, dtype=torch.long)
    totals = {}
    for per_update in (1, 4):
        order, losses, _ = surgeon_order(w, keep, h, group, per_update)
        for r in range(rows):  # every survivor leaves exactly once
            alive = int(keep[r].sum())
            assert sorted(order[r, :alive].tolist()) == keep[r].nonzero().squeeze(1).tolist()
        counts = row_counts(losses, 100)
        delta = (surgeon_weights(w, keep_after(keep, order, counts), h, group) - w).double()
        totals[per_update] = float(0.5 * torch.einsum("ri,ij,rj->", delta, h[0], delta))
        steps = torch.arange(d).unsqueeze(0) < counts.unsqueeze(1)
        assert totals[per_update] == pytest.approx(float(losses[steps].sum()), rel=1e-3)
    assert totals[4] < 1.1 * totals[1], totals


def fcl() -> FCL:
    torch.manual_seed(0)
    return FCL(20, 5, hidden=(32, 16))


def batches(n: int = 3, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 20, generator=gen), torch.randint(0, 5, (size,), generator=gen)) for _ in range(n)]


def masked(layer: MaskedLinear) -> int:
    return int((~layer.mask).sum())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_exact_counts_at_the_target_over_two_rounds(scope, one_thread):
    model = fcl()
    layers = target_layers(model)
    sizes = [layer.weight.numel() for layer in layers.values()]
    first = obs_prune(model, batches(), 0.6, scope=scope)
    assert first == round(0.6 * sum(sizes)) / sum(sizes)
    if scope == "layer":
        assert [masked(m) for m in layers.values()] == allocate(round(0.6 * sum(sizes)), sizes, [0] * len(sizes))
    masks = {name: layer.mask.clone() for name, layer in layers.items()}
    obs_prune(model, batches(), 0.9, scope=scope)
    assert sum(masked(m) for m in layers.values()) == round(0.9 * sum(sizes))
    for name, layer in layers.items():
        assert not torch.any(layer.mask & ~masks[name]), "a removed weight came back"
        assert torch.all(layer.weight[~layer.mask] == 0)


def test_corrected_weights_beat_magnitude_masking_on_the_layer_output(one_thread):
    torch.manual_seed(2)
    x = torch.randn(512, 48) @ torch.randn(48, 48)  # correlated inputs: where the correction pays
    dense = nn.Sequential(MaskedLinear(48, 24))
    errors_at = {}
    for method in ("obs", "magnitude"):
        model = nn.Sequential(MaskedLinear(48, 24))
        model.load_state_dict(dense.state_dict())
        if method == "obs":
            obs_prune(model, [(x, None)], 0.75, ["hidden"])
        else:
            magnitude_prune(model, 0.75, ["hidden"])
        assert masked(model[0]) == 0.75 * 48 * 24
        errors_at[method] = float((model(x) - dense(x)).detach().square().sum(1).mean())
    assert errors_at["obs"] < 0.5 * errors_at["magnitude"], errors_at


def moe(dispatch: str) -> MixtureOfExperts:
    torch.manual_seed(0)
    gate = NoisyTopKGate(in_features=20, num_experts=6, k=2)
    return MixtureOfExperts(20, 5, gate, SmallWorld(degree=2, rewire_p=0.3, fan_out=3), 6, 2, (16,), dispatch=dispatch)


@pytest.mark.parametrize("dispatch", ["capacity", "pairs"])
def test_expert_hessians_come_from_the_samples_routed_to_each_expert(dispatch, one_thread):
    model = moe(dispatch)
    data = batches(2)
    hessians = collect_hessians(model, target_layers(model), data)
    x = torch.cat([b[0] for b in data])
    active = routing_of(model).active_experts(x)  # eval mode: the selection the collection saw
    assert active.sum(1).eq(2).all()  # each sample reaches 2 of the 6 experts: the others must not see it
    expected = torch.stack([2 / len(x) * x[active[:, e]].double().T @ x[active[:, e]].double() for e in range(6)])
    assert torch.allclose(hessians["layers.0"], expected)
    assert hessians["route"].shape == (6, model.route.in_features, model.route.in_features)
    assert model.training, "the collection restores train mode"


def test_expert_layers_called_with_an_expert_per_block_count_each_block_for_its_expert():
    layer = ExpertLinear(3, 4, 2)

    class PerBlock(nn.Module):  # every sample through one expert chosen by the caller (pairs-style call)
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x.unsqueeze(1), torch.tensor([0, 2, 2, 0, 2]))

    x = torch.randn(5, 4)
    (h,) = collect_hessians(PerBlock(), {"layer": layer}, [(x, None)]).values()
    for e, rows in ((0, [0, 3]), (1, []), (2, [1, 2, 4])):
        assert torch.allclose(h[e], 2 / 5 * x[rows].double().T @ x[rows].double())


def test_callback_rejects_bad_settings():
    with pytest.raises(ValueError, match="prune.damp"):
        OBSPruning(damp=-0.1)
    with pytest.raises(ValueError, match="prune.batches"):
        OBSPruning(batches=0)
    with pytest.raises(ValueError, match="prune.scope"):
        OBSPruning(scope="row")


# -- the CLI --------------------------------------------------------------------------------------------
def test_cli_obs_prunes_the_fcl_and_a_mixture_exactly(tmp_path, store_template):
    import mlflow

    schedule = ["prune=obs", "prune.start=1", "prune.rounds=2", "prune.every=1", "prune.min_retrain=1"]
    base = ["train", "data=digits", *FAST, "threads=1", "trainer.max_epochs=3", *schedule]
    runs = run_in_folders(
        tmp_path,
        {
            "fcl": [*base, "model=fcl", "prune.target_sparsity=0.95"],
            "moe": [*base, "model=ptsne_moe", "prune.target_nonzero=5001", "prune.scope=global"],
            "bad": ["train", "data=digits", "model=fcl", "prune=obs", "prune.damp=-1"],
        },
        store_template,
    )
    for name in ("fcl", "moe"):
        folder, proc = runs[name]
        assert proc.returncode == 0, proc.stderr
        run = search_runs(folder).iloc[0]
        assert run["tags.prune"] == "obs"
        history = [m.value for m in mlflow.MlflowClient().get_metric_history(run["run_id"], "prune/sparsity")]
        assert history[0] < history[1] < history[2]  # epochs 0, 1, 2: rounds at the starts of 1 and 2
        assert history[-1] == pytest.approx(history[2])  # the end of the run
        if name == "fcl":  # iterative: 1 - 0.05^(1/2) after the first round, the target after the second
            assert history[:3] == pytest.approx([0.0, 1 - 0.05**0.5, 0.95], abs=1e-4)
        else:
            assert run["metrics.params/nonzero"] == 5001
    _, bad = runs["bad"]
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert errors(bad.stderr) == ["ssmoe: error: prune.damp=-1 must be >= 0 (0.01 is usual)"]
