"""Pruning: exact target sparsities, target selection by role, masks that hold through any
optimizer, magnitude/std criteria, StochasticNet draws, schedules and their validation, and the
accounting of a pruned model. OBD's Hessian estimators are tested in test_obd.py."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ssmoe_cli.data.synthetic import Synthetic
from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.models.accounting import account, dense_accounting, total_params
from ssmoe_cli.models.base import routing_of
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.models.topology.small_world import SmallWorld
from ssmoe_cli.module import ClassifierModule
from ssmoe_cli.prune import (
    MagnitudePruning,
    NoPruning,
    OBDPruning,
    Schedule,
    StochasticNet,
    apply_masks,
    layer_table,
    magnitude_prune,
    prune_to,
    random_masks,
    register_mask_hook,
    sparsity,
    std_prune,
    target_layers,
)

IN, CLASSES = 12, 5
ALL_ROLES = ["hidden", "output", "route", "gate"]


def fcl(seed: int = 0) -> FCL:
    torch.manual_seed(seed)
    return FCL(IN, CLASSES, hidden=(32, 16))


def moe(seed: int = 0, num_experts: int = 6, k: int = 2) -> MixtureOfExperts:
    """A small SGMoE with small-world routes (so route weights and their padding exist)."""
    torch.manual_seed(seed)
    gate = NoisyTopKGate(in_features=IN, num_experts=num_experts, k=k)
    with torch.no_grad():  # W_g starts at zero (Shazeer); random routing makes the gate prunable
        gate.w_gate.weight.normal_()
        gate.w_noise.weight.normal_()
    topology = SmallWorld(degree=2, rewire_p=0.3, fan_out=3)
    model = MixtureOfExperts(IN, CLASSES, gate, topology, num_experts=num_experts, k=k, expert_hidden=(16,), seed=seed)
    padding = torch.ones_like(model.route.mask)
    padding[0, :, -3:] = False  # expert 0 with one in-link fewer: masked padding, as other topologies make
    model.route.set_mask(padding)
    return model


MODELS = {"fcl": fcl, "moe": moe}


def masked_count(layer) -> int:
    return int((~layer.mask).sum())


def fit(model, callback, epochs=3, optimizer=None, batches_per_epoch=6):
    """A real Lightning fit on tiny synthetic data, without validation, logging or checkpoints."""
    data = Synthetic(
        in_features=IN, num_classes=CLASSES, n_train=16 * batches_per_epoch + 16, n_test=16, val_size=16, batch_size=16
    )
    module = ClassifierModule(model, CLASSES, optimizer)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback],
        deterministic=True,
    )
    trainer.fit(module, datamodule=data)
    return trainer, module


# -- schedules ----------------------------------------------------------------------------------------
def test_iterative_schedule_prunes_the_same_fraction_of_survivors_each_round():
    s = Schedule("iterative", target=0.9, rounds=3, start=4, every=2)
    assert s.events() == [4, 6, 8]
    kept = [1 - v for v in s.sparsities()]
    assert kept == pytest.approx([0.1 ** (1 / 3), 0.1 ** (2 / 3), 0.1])
    assert kept[1] / kept[0] == pytest.approx(kept[0])  # constant survivor fraction per round
    assert s.sparsities()[-1] == 0.9


def test_gradual_schedule_follows_the_cubic_formula():
    s = Schedule("gradual", target=0.8, rounds=4, start=0, every=10, unit="step", initial=0.2)
    # s_t = s_f + (s_i - s_f)(1 - t/T)^3 at t = 1..4, T = 4
    by_hand = [0.8 - 0.6 * 0.75**3, 0.8 - 0.6 * 0.5**3, 0.8 - 0.6 * 0.25**3, 0.8]
    assert s.sparsities() == pytest.approx(by_hand)
    assert s.events() == [0, 10, 20, 30]


def test_oneshot_schedule_is_one_event_at_start():
    s = Schedule("oneshot", target=0.7, rounds=5, start=3, every=4)
    assert s.events() == [3] and s.sparsities() == [0.7]


def test_schedule_check_names_the_keys_and_the_fix():
    s = Schedule("iterative", target=0.9, rounds=3, start=10, every=2, min_retrain=3)
    s.check(17)  # last event at epoch 14, three epochs left: fits
    with pytest.raises(SsmoeError) as err:
        s.check(16)
    msg = str(err.value)
    assert "\n" not in msg
    assert "trainer.max_epochs >= 17" in msg and "prune.start=10" in msg and "prune.every=2" in msg


def test_the_schedule_is_one_value_composed_from_the_flat_keys_users_type():
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    overrides = ["prune.schedule=gradual", "prune.rounds=4", "prune.start=5", "prune.initial_sparsity=0.1"]
    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        for method, cls in (("magnitude", MagnitudePruning), ("obd", OBDPruning)):
            cfg = compose("train", overrides=[f"prune={method}", *overrides, "hydra.runtime.output_dir=/tmp"])
            assert set(Schedule.keys()) <= set(cfg.prune)  # every schedule key can be typed as prune.<key>
            callback = instantiate(cfg.prune)
            assert isinstance(callback, cls)
            assert callback.schedule == Schedule("gradual", target=0.9, rounds=4, start=5, every=2, initial=0.1)


def test_schedule_keys_are_checked_and_a_schedule_value_is_taken_as_is():
    plan = Schedule("oneshot", target=0.5, start=1, min_retrain=1)
    assert MagnitudePruning(schedule=plan).schedule is plan
    with pytest.raises(TypeError, match="rounds_total"):
        MagnitudePruning(rounds_total=3)
    with pytest.raises(TypeError, match="not both"):
        OBDPruning(schedule=plan, rounds=2)


def test_bad_schedule_settings_are_rejected():
    with pytest.raises(ValueError, match="prune.target_sparsity"):
        Schedule(target=1.0)
    with pytest.raises(ValueError, match="prune.schedule"):
        MagnitudePruning(schedule="cosine")
    with pytest.raises(ValueError, match="prune.targets"):
        MagnitudePruning(targets=["experts"])
    with pytest.raises(ValueError, match="criterion=std"):
        MagnitudePruning(criterion="std", schedule="gradual")


def test_trainer_too_short_for_the_schedule_raises_before_training():
    model = fcl()
    before = model.net[0].weight.detach().clone()
    callback = MagnitudePruning(start=2, rounds=2, every=1, min_retrain=2)  # needs max_epochs >= 5
    with pytest.raises(SsmoeError, match="trainer.max_epochs >= 5"):
        fit(model, callback, epochs=4)
    assert torch.equal(model.net[0].weight, before)  # nothing trained or pruned


# -- exact sparsity, scopes and targets ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["fcl", "moe"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_to_reaches_exactly_the_target(name, scope):
    model = MODELS[name]()
    layers = target_layers(model)
    padding = sum(masked_count(layer) for layer in layers.values())
    assert (padding > 0) == (name == "moe")  # route padding is pre-masked and counts as pruned
    pre = {n: layer.mask.clone() for n, layer in layers.items()}
    saliency = {n: torch.rand(layer.weight.shape) for n, layer in layers.items()}
    reached = prune_to(model, saliency, 0.83, scope=scope)
    total = sum(layer.weight.numel() for layer in layers.values())
    if scope == "layer":  # each layer its proportional share, within one weight
        for layer in layers.values():
            assert abs(masked_count(layer) - 0.83 * layer.weight.numel()) < 1
    # Exact in total, both scopes: round(target * N) of the N targeted weights.
    assert sum(masked_count(layer) for layer in layers.values()) == round(0.83 * total)
    assert reached == sparsity(model) == pytest.approx(0.83, abs=1 / total)
    for n, layer in layers.items():
        assert not (layer.mask & ~pre[n]).any()  # nothing masked comes back


def test_already_masked_weights_stay_masked_and_count_as_pruned():
    model = fcl()
    layer = model.net[0]
    pre = torch.zeros_like(layer.mask)
    pre[:, :3] = True  # 3 of 12 columns kept: 75% pruned already
    layer.set_mask(pre)
    saliency = {"net.0": torch.rand(layer.weight.shape)}
    assert prune_to(model, saliency, 0.5) == 0.75  # cannot unprune: stays at 75%
    assert torch.equal(layer.mask, pre)
    prune_to(model, saliency, 0.9)
    assert masked_count(layer) == round(0.9 * layer.weight.numel()) and not layer.mask[:, 3:].any()


def test_ties_are_broken_deterministically():
    a, b = fcl(), fcl()
    for model in (a, b):
        layers = target_layers(model)
        prune_to(model, {n: torch.ones(layer.weight.shape) for n, layer in layers.items()}, 0.5)
    for la, lb in zip(target_layers(a).values(), target_layers(b).values(), strict=True):
        assert torch.equal(la.mask, lb.mask)


def test_default_targets_leave_the_gate_untouched():
    model = moe()
    magnitude_prune(model, 0.9)
    for name, layer in target_layers(model, ["gate"]).items():
        assert layer.mask.all(), name
    for name, layer in target_layers(model, ["hidden", "output"]).items():
        assert masked_count(layer) == round(0.9 * layer.weight.numel()), name


@pytest.mark.parametrize("only", ["route", "gate", "output"])
def test_a_single_role_can_be_targeted(only):
    model = moe()
    masks_before = {n: layer.mask.clone() for n, layer in target_layers(model, ALL_ROLES).items()}
    magnitude_prune(model, 0.7, targets=[only])
    for name, layer in target_layers(model, ALL_ROLES).items():
        if layer.role == only:
            assert masked_count(layer) == round(0.7 * layer.weight.numel()), name
        else:
            assert torch.equal(layer.mask, masks_before[name]), name
    assert sparsity(model, [only]) == pytest.approx(0.7, abs=1e-2)


def test_layer_table_lists_every_masked_layer():
    model = moe()
    magnitude_prune(model, 0.5, targets=["hidden"])
    rows = {row["name"]: row for row in layer_table(model)}
    assert set(rows) == {"gate.w_gate", "layers.0", "layers.1", "route"}  # W_noise: train-only, never pruned
    assert rows["layers.0"]["role"] == "hidden" and rows["layers.0"]["shape"] == (6, 16, IN)
    assert rows["layers.0"]["sparsity"] == 0.5 and rows["layers.0"]["nonzero"] == 6 * 16 * IN // 2
    assert rows["gate.w_gate"]["sparsity"] == 0.0 and rows["route"]["role"] == "route"


# -- magnitude ----------------------------------------------------------------------------------------
def test_layer_scope_keeps_the_largest_weights_of_each_layer():
    model = moe()
    layers = target_layers(model)
    before = {n: layer.masked_weight().detach().abs().clone() for n, layer in layers.items()}
    valid = {n: layer.mask.clone() for n, layer in layers.items()}
    magnitude_prune(model, 0.6, scope="layer")
    for name, layer in layers.items():
        kept, pruned = before[name][layer.mask], before[name][valid[name] & ~layer.mask]
        assert kept.min() >= pruned.max(), name
        assert torch.all(layer.weight[~layer.mask] == 0)


def test_global_scope_keeps_the_largest_weights_overall():
    model = fcl()
    with torch.no_grad():
        model.net[0].weight.mul_(10)  # the first layer's weights dominate a global ranking
    layers = target_layers(model)
    before = {n: layer.weight.detach().abs().clone() for n, layer in layers.items()}
    magnitude_prune(model, 0.6, scope="global")
    kept = torch.cat([before[n][layer.mask] for n, layer in layers.items()])
    pruned = torch.cat([before[n][~layer.mask] for n, layer in layers.items()])
    assert kept.min() >= pruned.max()
    assert sparsity(model) == pytest.approx(0.6, abs=1e-3)
    # One ranking over all layers, not layer by layer: the scaled-up first layer is mostly kept.
    assert layers["net.0"].mask.float().mean() > 0.9 and layers["net.2"].mask.float().mean() < 0.3


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_std_criterion_thresholds_at_quality_factor_times_std(scope):
    model = fcl()
    layers = target_layers(model)
    weights = {n: layer.weight.detach().clone() for n, layer in layers.items()}
    q = 0.8
    if scope == "layer":
        thresholds = {n: q * float(w.std(correction=0)) for n, w in weights.items()}
    else:
        shared = q * float(torch.cat([w.flatten() for w in weights.values()]).std(correction=0))
        thresholds = dict.fromkeys(weights, shared)
    reached = std_prune(model, q, scope=scope)
    for name, layer in layers.items():
        assert torch.equal(layer.mask, weights[name].abs() >= thresholds[name]), name
    n_pruned = sum(int((w.abs() < thresholds[n]).sum()) for n, w in weights.items())
    assert reached == n_pruned / sum(w.numel() for w in weights.values())


# -- masks hold through optimizers --------------------------------------------------------------------
OPTIMIZERS = {
    "adam_l2": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_masked_weights_stay_exactly_zero_under_any_optimizer(opt):
    torch.manual_seed(0)
    model = fcl()
    optimizer = OPTIMIZERS[opt](model.parameters())
    hook = register_mask_hook(optimizer, model)
    x, y = torch.randn(64, IN), torch.randint(0, CLASSES, (64,))
    layers = target_layers(model)
    for step in range(60):
        if step == 20:  # mid-training: moments at the new holes are not zero yet
            saliency = {n: layer.weight.detach().abs() for n, layer in layers.items()}
            prune_to(model, saliency, 0.8, optimizers=[optimizer])
        optimizer.zero_grad()
        F.cross_entropy(model(x).logits, y).backward()
        optimizer.step()
    hook.remove()
    for layer in layers.values():
        assert torch.all(layer.weight[~layer.mask] == 0)
        for value in optimizer.state[layer.weight].values():
            if torch.is_tensor(value) and value.shape == layer.mask.shape:
                assert torch.all(value[~layer.mask] == 0)  # exp_avg, exp_avg_sq, momentum_buffer
    assert sparsity(model) == pytest.approx(0.8, abs=1e-3)


def test_without_zeroing_the_state_adam_would_move_masked_weights():
    """Why apply_masks clears the moments: a stale exp_avg keeps updating a masked weight."""
    torch.manual_seed(0)
    model = fcl()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, IN), torch.randint(0, CLASSES, (64,))
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x).logits, y).backward()
        optimizer.step()
    layer = model.net[0]
    layer.set_mask(layer.weight.abs() > 0.1)  # the raw mechanism: no state reset, no hook
    optimizer.zero_grad()
    F.cross_entropy(model(x).logits, y).backward()
    optimizer.step()
    assert torch.any(layer.weight[~layer.mask] != 0)
    apply_masks({"net.0": layer}, {"net.0": layer.mask}, [optimizer])
    optimizer.zero_grad()
    F.cross_entropy(model(x).logits, y).backward()
    optimizer.step()
    assert torch.all(layer.weight[~layer.mask] == 0)


@pytest.mark.parametrize("opt", ["adam_l2", "sgd_momentum"])
def test_magnitude_callback_mid_training_keeps_holes_zero(opt):
    model = moe()
    callback = MagnitudePruning(
        target_sparsity=0.75, schedule="iterative", rounds=2, start=4, every=4, unit="step", min_retrain=4
    )
    trainer, module = fit(model, callback, epochs=3, optimizer=OPTIMIZERS[opt])
    assert [row["at"] for row in callback.history] == [4, 8] and trainer.global_step == 18
    for layer in target_layers(model).values():
        assert torch.all(layer.weight[~layer.mask] == 0)
        assert masked_count(layer) == round(0.75 * layer.weight.numel())
    assert trainer.callback_metrics["prune/sparsity"] == pytest.approx(callback.final_sparsity(model))


# -- the callbacks end to end -------------------------------------------------------------------------
def test_iterative_magnitude_rounds_follow_the_schedule_and_end_exactly_at_the_target():
    model = fcl()
    callback = MagnitudePruning(target_sparsity=0.9, rounds=3, start=1, every=1, min_retrain=1)
    fit(model, callback, epochs=4)
    assert [row["at"] for row in callback.history] == [1, 2, 3]
    assert [row["target"] for row in callback.history] == pytest.approx(callback.schedule.sparsities())
    assert [row["sparsity"] for row in callback.history] == pytest.approx(callback.schedule.sparsities(), abs=2e-3)
    layers = target_layers(model).values()
    for layer in layers:
        assert abs(masked_count(layer) - 0.9 * layer.weight.numel()) < 1
    assert sum(masked_count(layer) for layer in layers) == round(0.9 * sum(layer.weight.numel() for layer in layers))


def test_gradual_magnitude_on_steps_with_global_scope():
    model = moe()
    callback = MagnitudePruning(
        target_sparsity=0.8, schedule="gradual", rounds=4, start=2, every=2, unit="step", scope="global", min_retrain=2
    )
    fit(model, callback, epochs=2)
    assert [row["at"] for row in callback.history] == [2, 4, 6, 8]
    total = sum(layer.weight.numel() for layer in target_layers(model).values())
    assert callback.final_sparsity(model) == round(0.8 * total) / total


def test_no_pruning_reports_the_natural_sparsity():
    model = moe()
    natural = sparsity(model)
    assert natural > 0  # the masked route padding
    trainer, _ = fit(model, NoPruning(), epochs=1)
    assert trainer.callback_metrics["prune/sparsity"] == pytest.approx(natural)


def test_a_target_selection_that_matches_no_layer_is_an_error():
    with pytest.raises(SsmoeError, match="prune.targets"):
        fit(fcl(), MagnitudePruning(targets=["route"], start=0, rounds=1, min_retrain=1), epochs=1)


# -- StochasticNet ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fcl", "moe"])
def test_stochasticnet_draws_exactly_the_density_reproducibly(name):
    masks = random_masks(MODELS[name](), 0.3, seed=7)
    again = random_masks(MODELS[name](), 0.3, seed=7)
    other = random_masks(MODELS[name](), 0.3, seed=8)
    for n, mask in masks.items():
        assert int(mask.sum()) == round(0.3 * mask.numel()), n
        assert torch.equal(mask, again[n])
    assert any(not torch.equal(mask, other[n]) for n, mask in masks.items())


def test_stochasticnet_fixes_the_graph_before_training():
    model = moe()
    callback = StochasticNet(density=0.25, seed=3, targets=ALL_ROLES)
    expected = random_masks(moe(), 0.25, targets=callback.targets, seed=3)
    trainer, _ = fit(model, callback, epochs=2)
    for name, layer in target_layers(model, callback.targets).items():
        assert torch.equal(layer.mask, expected[name]), name
        assert torch.all(layer.weight[~layer.mask] == 0)
        assert int(layer.mask.sum()) == round(0.25 * layer.weight.numel())
    assert trainer.callback_metrics["prune/sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert callback.draw(model) == pytest.approx(0.75, abs=1e-3)  # drawing again: the same graph


def test_distance_mode_keeps_more_routes_between_close_experts():
    model = moe(num_experts=12)
    model.route.set_mask(torch.ones_like(model.route.mask))  # every route column valid for the comparison
    routing = routing_of(model)
    pos, source = routing.positions(), routing.route_columns
    dist = (pos.unsqueeze(1) - pos[source]).norm(dim=-1)  # (E, R)
    assert dist.unique().numel() > 2  # near and rewired far links both present
    kept = torch.zeros_like(dist)
    for seed in range(20):
        mask = random_masks(model, 0.3, targets=["route"], mode="distance", seed=seed, distance_scale=0.3)["route"]
        assert int(mask.sum()) == round(0.3 * mask.numel())
        kept += mask.float().mean(1)
    near = dist <= dist.median()
    assert kept[near].mean() > 1.5 * kept[~near].mean()
    uniform = sum(random_masks(model, 0.3, targets=["route"], seed=s)["route"].float().mean(1) for s in range(20))
    assert float(uniform[near].mean()) == pytest.approx(float(uniform[~near].mean()), rel=0.2)


def test_distance_mode_needs_routes():
    with pytest.raises(SsmoeError, match="prune.mode=distance"):
        random_masks(fcl(), 0.5, mode="distance")


def test_stochasticnet_rejects_a_bad_density():
    for density in (0.0, 1.5):
        with pytest.raises(ValueError, match="prune.density"):
            StochasticNet(density=density)


# -- OBD callback (estimators: test_obd.py) -----------------------------------------------------------
@pytest.mark.parametrize("hessian", ["fisher", "hutchinson"])
def test_obd_callback_prunes_a_moe_exactly_to_the_target(hessian):
    model = moe()
    callback = OBDPruning(
        target_sparsity=0.85,
        hessian=hessian,
        batches=2,
        probes=2,
        rounds=2,
        start=1,
        every=1,
        min_retrain=1,
        targets=ALL_ROLES,
    )
    fit(model, callback, epochs=3)
    assert len(callback.history) == 2
    for name, layer in target_layers(model, callback.targets).items():
        assert masked_count(layer) == round(0.85 * layer.weight.numel()), name
        assert torch.all(layer.weight[~layer.mask] == 0)


# -- accounting ---------------------------------------------------------------------------------------
def test_accounting_of_a_pruned_fcl_reflects_the_masks():
    model = fcl()
    dense = dense_accounting(model)
    magnitude_prune(model, 0.9)
    pruned = sum(masked_count(layer) for layer in target_layers(model).values())
    acc = dense_accounting(model)
    assert acc.params_total == dense.params_total == total_params(model)
    assert acc.params_nonzero == dense.params_nonzero - pruned
    assert acc.flops_per_sample == dense.flops_per_sample - pruned


def test_accounting_of_a_pruned_moe_reflects_the_masks():
    model = moe().eval()
    x = torch.randn(200, IN)
    before = account(model, x)
    nonzero_before = {n: layer.nonzero_weights() for n, layer in target_layers(model).items()}
    magnitude_prune(model, 0.75)
    removed = sum(nonzero_before[n] - layer.nonzero_weights() for n, layer in target_layers(model).items())
    after = account(model, x)
    assert after.params_total == before.params_total
    assert after.params_nonzero == before.params_nonzero - removed
    assert after.active_per_sample < 0.5 * before.active_per_sample
    assert after.flops_per_sample < 0.5 * before.flops_per_sample
    assert not math.isnan(after.active_per_sample)


def test_post_training_pruning_runs_at_the_end_and_revalidates_the_pruned_model():
    # prune.start = max_epochs with min_retrain=0: OBC's setting, no retraining after the event.
    model = fcl()
    callback = MagnitudePruning(target_sparsity=0.9, schedule="oneshot", start=2, min_retrain=0)
    data = Synthetic(in_features=IN, num_classes=CLASSES, n_train=112, n_test=16, val_size=32, batch_size=16)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[callback], deterministic=True,
    )  # fmt: skip
    trainer.fit(ClassifierModule(model, CLASSES), datamodule=data)
    assert [row["at"] for row in callback.history] == [2]
    layers = target_layers(model).values()
    assert sum(masked_count(layer) for layer in layers) == round(0.9 * sum(layer.weight.numel() for layer in layers))
    # val/acc is the pruned model's, measured after the event, not the last epoch's unpruned value.
    model.eval()
    x, y = data.val_set.tensors
    with torch.no_grad():
        expected = float((model(x).logits.argmax(1) == y).float().mean())
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(expected)
