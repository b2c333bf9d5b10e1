"""Dynamic sparse training (prune=set, prune=rigl): the allocation by hand, the cosine drop fraction by
hand, the exact count of active connections and of nonzero parameters across updates on the dense
network and a mixture, regrowth only at free positions (never in route padding) with new weights and
their Adam state at 0, RigL's growth where a constructed dense gradient is largest, and the CLI run
with its turnover metrics read back from MLflow."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, errors, run_in_folders, search_runs
from test_prune import CLASSES, IN, fcl, fit, moe

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.models.accounting import nonzero_params
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.prune import PruneContext, register_mask_hook, target_layers
from ssmoe_cli.prune.allocation import apportion, keep_counts
from ssmoe_cli.prune.rewire import dense_gradients
from ssmoe_cli.prune.rigl import RigL, cosine_fraction
from ssmoe_cli.prune.set import SparseEvolutionaryTraining

ALL = ["hidden", "output", "route", "gate"]


def active(model, targets) -> dict[str, int]:
    return {name: int(layer.mask.sum()) for name, layer in target_layers(model, targets).items()}


# -- allocation and schedule by hand ----------------------------------------------------------------
def test_erdos_renyi_erk_and_uniform_counts_by_hand_for_a_three_layer_net():
    model = fcl()  # 12-32-16-5: 384, 512, 80 weights, N = 976
    layers = target_layers(model, ["hidden", "output"])
    free = {name: layer.mask.clone() for name, layer in layers.items()}

    def counts(allocation, density):
        return keep_counts(model, layers, free, allocation, density, ["hidden", "output"])

    # ER: eps (n_in + n_out) per layer = eps x (44, 48, 21); density 0.2 keeps round(195.2) = 195, eps = 195 / 113:
    # 75.93, 82.83, 36.24 -> floors 75, 82, 36 (193), the two largest remainders get one more.
    assert counts("erdos_renyi", 0.2) == counts("erk", 0.2) == [76, 83, 36]
    # density 0.9 keeps 878: eps 878 / 113 would give the output layer 163 of its 80 -> dense (80), and the
    # other 798 go 44 : 48 -> 381.65, 416.35 -> 382, 416.
    assert counts("erdos_renyi", 0.9) == [382, 416, 80]
    # uniform: 195 in proportion to the sizes, 76.72, 102.30, 15.98 -> 77, 102, 16.
    assert counts("uniform", 0.2) == [77, 102, 16]
    assert apportion(10, [1.0, 1.0, 1.0], [10, 10, 1]) == [5, 4, 1]  # the capped part's excess is shared again
    with pytest.raises(SsmoeError, match="prune.target_nonzero=100000 is above"):
        keep_counts(model, layers, free, "erk", 0.2, ["hidden", "output"], target_nonzero=100_000)


def test_rigl_cosine_drop_fraction_by_hand():
    assert cosine_fraction(0.3, 0, 100) == pytest.approx(0.3)
    assert cosine_fraction(0.3, 25, 100) == pytest.approx(0.15 * (1 + math.sqrt(0.5)))  # 0.2561
    assert cosine_fraction(0.3, 50, 100) == pytest.approx(0.15)
    assert cosine_fraction(0.3, 75, 100) == pytest.approx(0.15 * (1 - math.sqrt(0.5)))  # 0.0439
    assert cosine_fraction(0.3, 100, 100) == cosine_fraction(0.3, 130, 100) == 0.0


# -- exact counts through real training ---------------------------------------------------------------
def counting(method):
    """The method's class, also recording after every optimizer step each layer's active count and
    the model's params/nonzero."""

    class Counting(method):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.rows.append((active(pl_module.model, self.targets), nonzero_params(pl_module.model)))

    return Counting


METHODS = {
    "set": lambda n: counting(SparseEvolutionaryTraining)(target_nonzero=n, every=1, seed=3, targets=ALL),
    "rigl": lambda n: counting(RigL)(target_nonzero=n, delta=4, stop=0.9, seed=3, targets=ALL),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("make", [fcl, moe], ids=["fcl", "moe"])
def test_active_and_nonzero_counts_stay_exactly_at_the_budget(make, method, one_thread):
    model = make()
    budget = nonzero_params(model) // 3 + 7  # an arbitrary, odd count
    callback = METHODS[method](budget)
    callback.rows = []
    fit(model, callback, epochs=4)
    assert len(callback.history) >= 3 and all(row["replaced"] > 0 for row in callback.history)
    first = callback.rows[0][0]
    assert all(counts == first for counts, _ in callback.rows)  # every layer keeps its count through every update
    assert [nonzero for _, nonzero in callback.rows] == [budget] * len(callback.rows)


# -- one update, looked at closely --------------------------------------------------------------------
def started(callback, model, optimizer):
    """The callback as on_fit_start leaves it, without Lightning: first graph drawn, update times known."""
    callback._model, callback._horizon = model, 100
    callback.start(model, PruneContext(optimizers=[optimizer], batches=lambda n: []))
    return callback


def train_steps(model, optimizer, batch, steps=3):
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(batch[0])
        F.cross_entropy(out.logits, batch[1]).backward()
        optimizer.step()


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_growth_only_at_free_positions_new_weights_and_adam_state_zero(method, one_thread):
    model = moe()  # route padding: expert 0 has 3 route columns that do not exist
    padding = ~model.route.mask.clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    register_mask_hook(optimizer, model)
    fraction = {"zeta": 0.6} if method == "set" else {"alpha": 0.6}
    make = {"set": SparseEvolutionaryTraining, "rigl": RigL}[method]
    callback = started(make(density=0.3, targets=ALL, **fraction), model, optimizer)
    model.gate.w_gate.weight.requires_grad_(False)  # frozen, as a pretrained t-SNE gate: never rewired
    gate_graph = model.gate.w_gate.mask.clone()
    torch.manual_seed(1)
    batch = (torch.randn(32, IN), torch.randint(0, CLASSES, (32,)))
    layers = {name: layer for name, layer in target_layers(model, ALL).items() if layer is not model.gate.w_gate}
    for now in (1, 2, 3):
        train_steps(model, optimizer, batch)  # Adam moments everywhere active
        before = {name: layer.mask.clone() for name, layer in layers.items()}
        callback.update(now, batch, [optimizer])
        assert torch.equal(model.gate.w_gate.mask, gate_graph)
        for name, layer in layers.items():
            grown, dropped = layer.mask & ~before[name], before[name] & ~layer.mask
            assert int(grown.sum()) == int(dropped.sum()) > 0, name
            assert not (layer.mask & ~callback.available[name]).any()  # never where the model has no weight
            assert (layer.weight[grown] == 0).all() and (layer.weight[dropped] == 0).all()
            state = optimizer.state[layer.weight]
            assert (state["exp_avg"][grown] == 0).all() and (state["exp_avg_sq"][grown] == 0).all()
    assert not (model.route.mask & padding).any()
    # replaced / active: at most the drop fraction (a dropped weight may grow back, at 0)
    assert all(0 < row["turnover"] <= 0.6 + 1e-9 for row in callback.history)


def test_rigl_grows_where_the_dense_gradient_is_largest(one_thread):
    """One linear layer 4 -> 3, only feature 2 nonzero, every label class 1: the loss gradient is
    (softmax - onehot)^T x / B, nonzero only in column 2, largest in magnitude at (1, 2)."""
    torch.manual_seed(0)
    model = FCL(4, 3, hidden=())
    layer = model.net[0]
    x = torch.zeros(8, 4)
    x[:, 2] = 5.0
    y = torch.ones(8, dtype=torch.long)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.4, 0.0, 0.3], [0.2, 0.6, 0.0, -0.1], [-0.7, 0.25, 0.0, 0.45]]))
        layer.mask.copy_(layer.weight != 0)  # column 2 missing: its weight gets no gradient through weight x mask
    name = next(iter(target_layers(model, ["output"])))
    expected = ((torch.softmax(model(x).logits, 1) - F.one_hot(y, 3)).T @ x / len(x)).detach()
    grads = dense_gradients(model, {name: layer}, (x, y))
    assert torch.allclose(grads[name], expected, atol=1e-6)
    assert grads[name][1, 2] < 0 and grads[name][:, 2].abs().argmax() == 1
    model(x).logits.sum().backward()
    assert (layer.weight.grad[:, 2] == 0).all()  # the plain gradient would see nothing there

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    layer.mask.fill_(True)  # the layer as built: every position exists (start() records that)
    callback = RigL(density=9 / 12, alpha=1 / 9, targets=["output"])  # drop 1 of 9, grow 1
    started(callback, model, optimizer)
    with torch.no_grad():  # start() drew a random graph: put back the one above
        layer.weight.copy_(torch.tensor([[0.5, -0.4, 0.0, 0.3], [0.2, 0.6, 0.0, -0.1], [-0.7, 0.25, 0.0, 0.45]]))
        layer.mask.copy_(layer.weight != 0)
    callback.update(1, (x, y), [optimizer])
    assert not bool(layer.mask[1, 3]) and int(layer.mask.sum()) == 9  # -0.1, the smallest |w|, dropped
    assert bool(layer.mask[1, 2]) and float(layer.weight.detach()[1, 2]) == 0.0


def test_new_weights_no_gradient_reaches_are_reported_when_training_ends(one_thread, caplog):
    """Feature 2 only is nonzero: of 6 weights grown into a 4 -> 3 layer, the 3 in column 2 train,
    the other 3 get no gradient and stay 0 (active, uncounted); the end of training says how many."""
    model = FCL(4, 3, hidden=())
    layer = model.net[0]
    x = torch.zeros(8, 4)
    x[:, 2] = 5.0
    y = torch.ones(8, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    register_mask_hook(optimizer, model)
    callback = started(RigL(density=0.5, alpha=0.999, stop=1.0, targets=["output"]), model, optimizer)
    # Drops all 6 active weights and grows 6: column 2's 3 (the only gradient), then 3 drawn among the rest.
    callback.update(1, (x, y), [optimizer])
    train_steps(model, optimizer, (x, y), steps=2)
    idle = int((layer.mask & (layer.weight == 0)).sum())
    assert idle == int(layer.mask[:, [0, 1, 3]].sum()) == 3 and not (layer.weight[:, 2] == 0).any()
    assert nonzero_params(model) == 6 - idle + 3  # 3 biases
    with caplog.at_level("WARNING"):
        callback.on_fit_end(None, None)
    assert f"{idle} active connections are still exactly 0" in caplog.text


def test_a_resumed_callback_keeps_the_evolved_graph(one_thread):
    model = fcl()
    optimizer = torch.optim.Adam(model.parameters())
    callback = started(SparseEvolutionaryTraining(density=0.2, targets=ALL), model, optimizer)
    callback.update(1, (torch.randn(16, IN), torch.randint(0, CLASSES, (16,))), [optimizer])
    masks = {name: layer.mask.clone() for name, layer in target_layers(model, ALL).items()}
    resumed = SparseEvolutionaryTraining(density=0.2, targets=ALL)
    resumed.load_state_dict(callback.state_dict())
    started(resumed, model, optimizer)  # a fresh start would redraw the first graph
    assert all(torch.equal(layer.mask, masks[name]) for name, layer in target_layers(model, ALL).items())
    assert resumed.last_at == 1 and len(resumed.history) == 1


# -- the CLI --------------------------------------------------------------------------------------------
def test_cli_set_and_rigl_runs_log_turnover_at_the_exact_budget(tmp_path, store_template):
    import mlflow

    base = ["train", "model=fcl", "data=digits", *FAST, "threads=1", "prune.target_nonzero=4001"]
    runs = run_in_folders(
        tmp_path,
        {
            "set": [*base, "prune=set", "trainer.max_epochs=2"],
            "rigl": [*base, "prune=rigl", "prune.delta=4", "trainer.max_epochs=2"],
            "bad": ["train", "prune=set", "prune.allocation=random"],
        },
        store_template,
    )
    expected_updates = {"set": [0, 1], "rigl": [2, 1]}  # set: epoch 1; rigl: steps 4, 8, 12 of 20 (< 15)
    for name, updates in expected_updates.items():
        folder, proc = runs[name]
        assert proc.returncode == 0, proc.stderr
        run = search_runs(folder).iloc[0]
        assert run["metrics.params/nonzero"] == 4001
        client = mlflow.MlflowClient()
        per_epoch = [m.value for m in client.get_metric_history(run["run_id"], "prune/turnover")]
        total = [m.value for m in client.get_metric_history(run["run_id"], "prune/turnover_total")]
        assert len(per_epoch) == len(updates) and [v > 0 for v in per_epoch] == [n > 0 for n in updates]
        assert total == pytest.approx(list(itertools.accumulate(per_epoch)))
    assert (
        errors(runs["bad"][1].stderr) == ["ssmoe: error: prune.allocation='random': choose erdos_renyi, erk or uniform"]
        and runs["bad"][1].returncode != 0
    )
