"""Routing controls (issue 14): pca_map, input_kmeans and lsh gates, by hand and through the CLI."""

from __future__ import annotations

import inspect
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ssmoe_cli.models.gating import Gate, topk_softmax
from ssmoe_cli.models.gating.input_kmeans import InputKMeansGate
from ssmoe_cli.models.gating.lsh import LSHGate
from ssmoe_cli.models.gating.pca_map import PCAMapGate
from ssmoe_cli.models.gating.ptsne import auto_temperature, grid, kmeans
from ssmoe_cli.models.gating.spatial import principal_axes
from ssmoe_cli.models.moe import MixtureOfExperts

CONF = Path(__file__).resolve().parents[1] / "conf" / "gating"
GATES = {"pca_map": PCAMapGate, "input_kmeans": InputKMeansGate, "lsh": LSHGate}

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n_per: int, n_blobs: int, dim: int, spread: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs (unit variance around centres of scale `spread`) and their labels."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_blobs, dim, generator=g) * spread
    x = means.repeat_interleave(n_per, 0) + torch.randn(n_per * n_blobs, dim, generator=g)
    return x, torch.arange(n_blobs).repeat_interleave(n_per)


def prepared(name: str, d: int, e: int, k: int, seed: int = 0, **kw) -> Gate:
    x, _ = blobs(40, e, d)
    gate = GATES[name](d, e, k, **kw)
    gate.prepare(x, torch.Generator().manual_seed(seed))
    return gate


# -- the GateOutput contract ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", GATES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_gate_output_contract(name: str, k: int) -> None:
    gate = prepared(name, 10, 5, k)
    x, _ = blobs(20, 5, 10, seed=1)  # held out: other points of the same kind
    for training in (True, False):
        gate.train(training)
        out = gate(x)
        assert out.weights.shape == (len(x), 5) and out.indices.shape == out.values.shape == (len(x), k)
        assert torch.allclose(out.weights.sum(1), torch.ones(len(x)))
        assert torch.equal((out.weights > 0).sum(1), torch.full((len(x),), k))
        assert torch.equal(out.values, out.weights.gather(1, out.indices))
        assert bool((out.values[:, :-1] >= out.values[:, 1:]).all())  # sorted by gate value, descending
        assert out.aux == {}
        assert (out.embedding is not None) == (name == "pca_map")


# -- pca_map --------------------------------------------------------------------------------------------
def test_pca_map_is_the_top_two_principal_components() -> None:
    """Data with known axes (a rotation of independent coordinates of std 5, 2, 1, 0.5, 0.2): the map's
    weight rows are numpy's two leading right singular vectors up to sign (and close to the rotation's
    first two axes), its bias centres the data, and embed is the projection of the centred data."""
    g = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    std = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    z = torch.randn(4000, 5, generator=g, dtype=torch.float64) * std
    x = (z @ rotation.T + torch.tensor([3.0, -1.0, 0.0, 2.0, 5.0], dtype=torch.float64)).float()
    gate = PCAMapGate(5, 4, 2, fit_samples=None)
    gate.prepare(x, torch.Generator().manual_seed(0))

    xn = x.double().numpy()
    vt = np.linalg.svd(xn - xn.mean(0), full_matrices=False)[2][:2]
    w = gate.net.weight.double().numpy()
    for row, axis, true_axis in zip(w, vt, rotation.T[:2].numpy(), strict=True):
        assert np.allclose(row, axis, atol=1e-5) or np.allclose(row, -axis, atol=1e-5)
        assert abs(abs(row @ true_axis) - 1) < 1e-2
    assert np.allclose(gate.net.bias.double().numpy(), -w @ xn.mean(0), atol=1e-4)
    assert np.allclose(gate.embed(x).double().numpy(), (xn - xn.mean(0)) @ w.T, atol=1e-3)
    # The sign is fixed (largest-magnitude coordinate positive), so refits agree exactly.
    assert all(row[np.abs(row).argmax()] > 0 for row in w)


def test_pca_map_places_centres_exactly_as_ptsne() -> None:
    x, _ = blobs(50, 4, 6)
    for mode in ("kmeans", "grid"):
        gate = PCAMapGate(6, 4, 2, centres=mode, temperature_margin=2.0, fit_samples=None)
        gate.prepare(x, torch.Generator().manual_seed(3))
        y = gate.embed(x)
        expected = kmeans(y, 4, torch.Generator().manual_seed(3)) if mode == "kmeans" else grid(y, 4)
        assert torch.equal(gate.centres, expected)
        assert gate.temperature.item() == pytest.approx(auto_temperature(expected, y, 2.0), rel=1e-6)
        assert torch.equal(gate.positions, gate.centres)
        # Routing: top-k softmax of -||y - c||^2 / temperature, by hand.
        by_hand = topk_softmax(-(torch.cdist(y, gate.centres) ** 2) / gate.temperature, 2)[0]
        assert torch.allclose(gate(x).weights, by_hand, atol=1e-5)


def test_pca_map_is_fixed_and_deterministic_given_the_generator() -> None:
    x, _ = blobs(100, 4, 8)
    a, b, c = (PCAMapGate(8, 4, 2, fit_samples=150) for _ in range(3))
    for gate, seed in ((a, 0), (b, 0), (c, 1)):
        gate.prepare(x, torch.Generator().manual_seed(seed))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.net.weight, c.net.weight)  # another subsample: another fit
    assert not any(p.requires_grad for p in a.parameters())


# -- input_kmeans ---------------------------------------------------------------------------------------
def test_input_kmeans_routes_a_point_at_a_centre_to_its_expert() -> None:
    x, _ = blobs(40, 6, 12)
    gate = InputKMeansGate(12, 6, 2, fit_samples=None)
    gate.prepare(x, torch.Generator().manual_seed(0))
    assert torch.equal(gate.centres, kmeans(x, 6, torch.Generator().manual_seed(0)))
    assert torch.equal(gate(gate.centres).indices[:, 0], torch.arange(6))
    # The logits are -||x - c||^2 / temperature: the same top-k softmax, computed by hand.
    by_hand = topk_softmax(-(torch.cdist(x, gate.centres) ** 2) / gate.temperature, 2)[0]
    assert torch.allclose(gate(x).weights, by_hand, atol=1e-5)
    assert gate.temperature.item() == pytest.approx(auto_temperature(gate.centres, x, 1.0), rel=1e-6)


def test_input_kmeans_subsample_is_deterministic_and_its_positions_keep_centre_distances() -> None:
    """k-means on fit_samples points drawn from the generator; positions (classical MDS of the centres)
    keep the centres' distances exactly when the data lie in a 2-D plane of the input space."""
    z, _ = blobs(60, 5, 2, spread=4.0)
    plane = torch.linalg.qr(torch.randn(9, 2, generator=torch.Generator().manual_seed(1)))[0]  # (9, 2)
    x = z @ plane.T + 7.0
    gates = [InputKMeansGate(9, 5, 2, fit_samples=100) for _ in range(3)]
    for gate, seed in zip(gates, (0, 0, 1), strict=True):
        gate.prepare(x, torch.Generator().manual_seed(seed))
    assert torch.equal(gates[0].centres, gates[1].centres)
    assert not torch.equal(gates[0].centres, gates[2].centres)
    pos = gates[0].positions
    assert pos.shape == (5, 2)
    assert torch.allclose(torch.cdist(pos, pos), torch.cdist(gates[0].centres, gates[0].centres), atol=1e-4)


def test_principal_axes_through_covariance_and_svd_match_numpy() -> None:
    """More rows than columns goes through the covariance, fewer through the SVD: both give numpy's
    leading right singular vectors, signed so that each one's largest-magnitude coordinate is positive."""
    x, _ = blobs(30, 3, 6)
    for rows in (x, x[:5]):  # 90 x 6: covariance; 5 x 6: SVD
        mean, axes = principal_axes(rows, 2)
        xn = rows.double().numpy()
        vt = np.linalg.svd(xn - xn.mean(0), full_matrices=False)[2][:2]
        vt *= np.sign(vt[np.arange(2), np.abs(vt).argmax(1)])[:, None]
        assert np.allclose(mean.numpy(), xn.mean(0), atol=1e-5)
        assert np.allclose(axes.numpy(), vt, atol=1e-5)
    # Points on a line: that line's direction, sign fixed; one column only: the second axis is zero.
    line = torch.outer(torch.arange(4.0), torch.tensor([0.6, -0.8, 0.0]))
    assert torch.allclose(principal_axes(line, 2)[1][0], torch.tensor([-0.6, 0.8, 0.0]), atol=1e-6)
    assert torch.equal(principal_axes(torch.arange(5.0)[:, None], 2)[1], torch.tensor([[1.0], [0.0]]))


# -- lsh ------------------------------------------------------------------------------------------------
def test_lsh_is_deterministic_by_seed_and_has_no_parameters() -> None:
    x, _ = blobs(50, 4, 16)
    a, b = prepared("lsh", 16, 8, 2), prepared("lsh", 16, 8, 2)
    c = LSHGate(16, 8, 2, seed=1)
    c.prepare(x, torch.Generator())
    assert torch.equal(a(x).indices, b(x).indices) and torch.equal(a.projection, b.projection)
    assert not torch.equal(a(x).indices, c(x).indices)
    assert list(a.parameters()) == []
    assert torch.allclose(a.projection.norm(dim=1), torch.ones(8))
    # The logits are the centred input's projections, by hand.
    x_train, _ = blobs(40, 8, 16)  # what prepared() centred it on
    assert torch.allclose(a.logits(x), (x - x_train.mean(0)) @ a.projection.T, atol=1e-4)
    assert torch.allclose(a(x).values, torch.full((len(x), 2), 0.5))


@pytest.mark.parametrize("name", GATES)
def test_routing_does_not_change_after_an_optimizer_step_of_the_whole_model(name: str) -> None:
    """None of the controls is trained: a large AdamW step (weight decay too) on the task loss moves
    the experts but not one routing decision or gate tensor."""
    x, y = blobs(30, 4, 10)
    torch.manual_seed(0)
    model = MixtureOfExperts(10, 4, GATES[name](10, 4, 2), num_experts=4, k=2, expert_hidden=[8])
    model.prepare(x, torch.Generator().manual_seed(0))
    before = {key: t.clone() for key, t in model.gate.state_dict().items()}
    routed, expert = model.gate(x).indices, model.layers[0].weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=0.5, weight_decay=0.5)
    F.cross_entropy(model(x).logits, y).backward()
    opt.step()
    assert not torch.equal(model.layers[0].weight, expert)
    assert torch.equal(model.gate(x).indices, routed)
    for key, value in model.gate.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(p.requires_grad for p in model.gate.parameters())


# -- accounting and state ---------------------------------------------------------------------------------
def test_accounting_of_each_control() -> None:
    d, e = 10, 4
    pca = prepared("pca_map", d, e, 2)
    assert pca.active_params() == 2 * d + 2 + 2 * e + 1  # map weights, biases, centres, temperature
    assert pca.active_macs() == 2 * d + 2 * e
    pca.net.set_mask(torch.arange(2 * d).reshape(2, d) % 2 == 0)  # half the map pruned
    assert pca.active_macs() == d + 2 * e and pca.active_params() == d + 2 + 2 * e + 1

    km = prepared("input_kmeans", d, e, 2)
    assert km.active_params() == e * d + 1 and km.active_macs() == e * d
    km.centres[0, :3] = 0.0  # zero coordinates cost nothing in the dot products
    assert km.active_params() == e * d - 2 and km.active_macs() == e * d - 3

    lsh = prepared("lsh", d, e, 2)
    assert lsh.active_params() == e * d + e and lsh.active_macs() == e * d


@pytest.mark.parametrize("name", GATES)
def test_state_dict_carries_the_routing(name: str) -> None:
    """A gate built afresh (another seed for lsh) routes as the prepared one once given its state."""
    gate = prepared(name, 10, 5, 2)
    fresh = GATES[name](10, 5, 2, **({"seed": 7} if name == "lsh" else {}))
    x, _ = blobs(20, 5, 10, seed=2)
    assert not torch.equal(fresh(x).weights, gate(x).weights)
    fresh.load_state_dict(gate.state_dict())
    assert torch.equal(fresh(x).weights, gate(x).weights)


def test_bad_arguments_are_refused() -> None:
    for make, words in (
        (lambda: PCAMapGate(4, 3, 2, centres="learned"), "choose grid or kmeans"),
        (lambda: PCAMapGate(4, 3, 4), "k=4 must be between 1 and num_experts=3"),
        (lambda: PCAMapGate(4, 3, 2, temperature="hot"), "'auto' or a positive number"),
        (lambda: InputKMeansGate(4, 8, 2, fit_samples=5), "at least num_experts=8 points"),
        (lambda: InputKMeansGate(4, 3, 2, temperature_margin=0.0), "must be > 0"),
        (lambda: LSHGate(4, 3, 0), "k=0 must be between 1"),
    ):
        with pytest.raises(ValueError, match=words):
            make()


# -- configs and the CLI ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GATES)
def test_configs_instantiate_with_the_constructor_defaults(name: str) -> None:
    cfg = OmegaConf.create({"data": {"in_features": 12}, "model": {"num_experts": 4, "k": 2}, "seed": 5})
    cfg.gating = OmegaConf.load(CONF / f"{name}.yaml")
    gate = instantiate(cfg.gating)
    assert isinstance(gate, GATES[name]) and (gate.num_experts, gate.k) == (4, 2)
    params = inspect.signature(GATES[name].__init__).parameters
    listed = set(cfg.gating) - {"_target_"}
    assert listed == set(params) - {"self"}
    interpolated = {"in_features", "num_experts", "k", "seed"}
    for key in listed - interpolated:
        assert OmegaConf.to_object(cfg.gating)[key] == params[key].default, key
    if name == "lsh":
        assert gate.seed == 5  # the run's seed draws the hash


@pytest.mark.slow
def test_ptsne_moe_trains_with_each_control_and_its_file_predicts_the_same(tmp_path, store_template) -> None:
    """`ssmoe train model=ptsne_moe gating=<control>` for each control (three runs at once): the run
    used that gate, has the map diagnostics exactly when the gate has a map, and its model file,
    reloaded, scores the run's test/acc on the raw test inputs."""
    from conftest import FAST, run_parallel, search_runs

    from ssmoe_cli.data.digits import Digits
    from ssmoe_cli.export import load_model

    for name in GATES:
        (tmp_path / name).mkdir()
        shutil.copyfile(store_template, tmp_path / name / "mlflow.db")  # an existing store: no schema set-up
    args = ["train", "model=ptsne_moe", "data=digits", "threads=1", *FAST]
    run_parallel(*((tmp_path / name, [*args, f"gating={name}"]) for name in GATES))
    raw = Digits(in_features=64, num_classes=10).load()
    x, y = torch.as_tensor(raw.x_test), torch.as_tensor(raw.y_test)
    for name, cls in GATES.items():
        runs = search_runs(tmp_path / name)
        assert len(runs) == 1
        run = runs.iloc[0]
        assert run["params.model.gate._target_"] == f"{cls.__module__}.{cls.__qualname__}"
        assert run["tags.gating"] == name
        has_map = not math.isnan(run.get("metrics.gate/trustworthiness", math.nan))
        assert has_map == (name == "pca_map"), name
        (run_dir,) = (tmp_path / name).glob("logs/train/runs/*")
        model = load_model(run_dir / "model.safetensors")
        with torch.no_grad():
            acc = float((model(x).logits.argmax(1) == y).float().mean())
        assert acc == pytest.approx(float(run["metrics.test/acc"]), abs=1e-6), name


def test_ablation_routing_map_gives_every_gate_the_same_expert_budget_and_never_prunes_a_gate() -> None:
    """experiment=ablation_routing_map matches the EXPERTS' nonzero weights across its gates (the better
    map's f is larger than the experts' budget): a target sparsity over the expert roles only."""
    from hydra import compose, initialize_config_module

    from ssmoe_cli.models.accounting import nonzero_params
    from ssmoe_cli.prune.masks import prune_to, target_layers

    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        sweep = compose("train", overrides=["experiment=ablation_routing_map"], return_hydra_config=True)
        gates = str(sweep.hydra.sweeper.params.gating).split(",")
        assert {"ptsne_knn", "ptsne_knn_random", "ptsne", "noisy_topk"} <= set(gates) and len(gates) == 9
        kept = set()
        for gate in gates:
            cfg = compose("train", overrides=["experiment=ablation_routing_map", f"gating={gate}"])
            assert list(cfg.prune.targets) == ["hidden", "output", "route"] and cfg.prune.target_nonzero is None
            torch.manual_seed(0)
            model = instantiate(cfg.model)
            layers = target_layers(model, cfg.prune.targets)
            gate_before = nonzero_params(model.gate)
            prune_to(
                model, {n: m.weight.detach().abs() for n, m in layers.items()}, cfg.prune.target_sparsity, "global"
            )
            assert nonzero_params(model.gate) == gate_before  # the gate is untouched
            kept.add(sum(int(m.masked_weight().count_nonzero()) for m in layers.values()))
    assert len(kept) == 1  # 8 experts x (784*64 + 64*10) weights, 93.5% pruned, whatever the gate
    assert kept == {round(8 * (784 * 64 + 64 * 10) * (1 - 0.935))}
