"""Sparse export: smaller than dense when sparse, identical predictions after loading, weights only,
and CSR layers that compute what the dense layers compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.export import CSRExpertLinear, CSRLinear, export_model, index_dtype, load_model, use_sparse_kernels
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.layers import ExpertLinear, MaskedLinear, masked_layers

FCL_CFG = {"_target_": "ssmoe_cli.models.fcl.FCL", "in_features": 784, "num_classes": 10, "hidden": [300, 100]}


def sparsify(model: torch.nn.Module, sparsity: float, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for layer in masked_layers(model):
        layer.set_mask(torch.rand(layer.weight.shape, generator=gen) >= sparsity)


def fcl(sparsity: float) -> FCL:
    torch.manual_seed(0)
    model = FCL(784, 10, hidden=[300, 100]).eval()
    sparsify(model, sparsity)
    return model


def test_index_dtype_is_the_smallest_that_fits():
    assert index_dtype(255) == torch.uint8
    assert index_dtype(783) == torch.int16
    assert index_dtype(70_000) == torch.int32


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98])
def test_round_trip_predicts_identically(tmp_path, sparsity):
    model = fcl(sparsity)
    export_model(model, FCL_CFG, tmp_path / "m.safetensors")
    x = torch.randn(64, 784)
    for kernels in (False, True):
        loaded = load_model(tmp_path / "m.safetensors", sparse_kernels=kernels)
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
        assert torch.equal(loaded(x).logits.argmax(1), model(x).logits.argmax(1))


def test_file_is_smaller_than_dense_above_two_thirds_sparsity(tmp_path):
    dense = export_model(fcl(0.0), FCL_CFG, tmp_path / "dense.safetensors").bytes
    assert dense == pytest.approx(266_610 * 4, rel=0.01)
    for sparsity in (0.7, 0.9, 0.95):
        size = export_model(fcl(sparsity), FCL_CFG, tmp_path / f"s{sparsity}.safetensors").bytes
        assert size < dense
    size95 = export_model(fcl(0.95), FCL_CFG, tmp_path / "s95.safetensors").bytes
    assert dense / size95 > 5  # values (4 B) + int16 column index (2 B) per nonzero


def test_loader_refuses_bad_files_with_one_error(tmp_path):
    # Crafted configs (code in the metadata) are tests/test_security.py's.
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SsmoeError, match="cannot read"):
        load_model(tmp_path / "junk.safetensors")
    export_model(fcl(0.5), {**FCL_CFG, "hidden": [300, 99]}, tmp_path / "mismatch.safetensors")
    with pytest.raises(SsmoeError, match="tensors do not fit its model config"):
        load_model(tmp_path / "mismatch.safetensors")


def test_preprocessing_travels_with_the_file_and_old_files_have_none(tmp_path):
    from ssmoe_cli.data.preprocessing import Preprocessing
    from ssmoe_cli.export import Preprocessed

    model = fcl(0.9)
    prep = Preprocessing(784, mean=72.9, std=90.0, class_names=tuple("abcdefghij"))
    export_model(model, FCL_CFG, tmp_path / "m.safetensors", preprocessing=prep)
    loaded = load_model(tmp_path / "m.safetensors")
    assert isinstance(loaded, Preprocessed) and loaded.class_names == tuple("abcdefghij")
    raw = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)  # images as the dataset stores them
    expected = model((raw.reshape(5, -1).float() - 72.9) / 90.0).logits
    assert torch.allclose(loaded(raw).logits, expected, atol=1e-5)
    export_model(model, FCL_CFG, tmp_path / "old.safetensors")  # as files written before
    assert isinstance(load_model(tmp_path / "old.safetensors"), FCL)


def test_export_and_load_raise_no_torch_sparse_warnings(tmp_path):
    """torch warns once per process ("Sparse CSR tensor support is in beta", "Sparse invariant
    checks are implicitly disabled ... SEGFAULT"), so a fresh interpreter with warnings as errors."""
    import subprocess
    import sys

    script = f"""
import torch
from ssmoe_cli.export import CSRExpertLinear, export_model, load_model
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.models.layers import ExpertLinear
model = FCL(64, 10, hidden=[32])
model.net[0].set_mask(torch.rand(32, 64) > 0.9)
export_model(model, {FCL_CFG!r} | dict(in_features=64, hidden=[32]), {str(tmp_path / "m.safetensors")!r})
load_model({str(tmp_path / "m.safetensors")!r})
layer = ExpertLinear(4, 30, 12)
layer.set_mask(torch.rand(4, 12, 30) > 0.9)
CSRExpertLinear(layer)(torch.randn(4, 5, 30))
"""
    proc = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_pickle_in_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    export_model(fcl(0.9), FCL_CFG, path)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "ssmoe-sparse/1"
    assert b"\x80\x04" not in path.read_bytes()[:2]  # safetensors header, not a pickle stream


def test_csr_layers_compute_what_dense_layers_compute():
    torch.manual_seed(0)
    lin = MaskedLinear(50, 20)
    lin.set_mask(torch.rand(20, 50) > 0.8)
    x = torch.randn(7, 50)
    assert torch.allclose(CSRLinear(lin)(x), lin(x), atol=1e-6)
    exp = ExpertLinear(4, 30, 12)
    exp.set_mask(torch.rand(4, 12, 30) > 0.9)
    xe = torch.randn(4, 5, 30)
    assert torch.allclose(CSRExpertLinear(exp)(xe), exp(xe), atol=1e-6)


def test_exported_sparse_moe_with_routes_predicts_identically_on_every_dispatch_path(tmp_path):
    from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
    from ssmoe_cli.models.moe import MixtureOfExperts
    from ssmoe_cli.models.topology.small_world import SmallWorld

    torch.manual_seed(0)
    gate = NoisyTopKGate(in_features=784, num_experts=8, k=2)
    with torch.no_grad():
        gate.w_gate.weight.normal_()
    model = MixtureOfExperts(
        784, 10, gate, SmallWorld(degree=2, fan_out=4), num_experts=8, k=2, expert_hidden=[64]
    ).eval()
    sparsify(model, 0.97)
    cfg = {
        "_target_": "ssmoe_cli.models.moe.MixtureOfExperts",
        "in_features": 784,
        "num_classes": 10,
        "num_experts": 8,
        "k": 2,
        "expert_hidden": [64],
        "gate": {
            "_target_": "ssmoe_cli.models.gating.noisy_topk.NoisyTopKGate",
            "in_features": 784,
            "num_experts": 8,
            "k": 2,
        },
        "topology": {"_target_": "ssmoe_cli.models.topology.small_world.SmallWorld", "degree": 2, "fan_out": 4},
    }
    export_model(model, cfg, tmp_path / "moe.safetensors")
    loaded = load_model(tmp_path / "moe.safetensors", sparse_kernels=False)
    # Force the CSR versions of every expert layer, whether or not they measure faster here.
    for i, layer in enumerate(loaded.layers):
        loaded.layers[i] = CSRExpertLinear(layer)
    loaded.route = CSRExpertLinear(loaded.route)
    for batch in (1, 3, 64):  # pairs, pairs, capacity
        x = torch.randn(batch, 784)
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5), batch


def test_sparse_kernels_are_used_only_where_measured_faster_and_keep_outputs():
    model = fcl(0.97)
    x = torch.randn(256, 784)
    before = model(x).logits
    decisions = use_sparse_kernels(model)
    assert set(decisions) == {"net.0", "net.2", "net.4"}
    for name, used in decisions.items():
        assert isinstance(model.get_submodule(name), CSRLinear) == used
    assert torch.allclose(model(x).logits, before, atol=1e-5)
    assert torch.allclose(model(x[:1]).logits, before[:1], atol=1e-5)


@pytest.mark.parametrize(("full", "few"), [(True, True), (True, False), (False, True)])
def test_csr_linear_runs_each_use_on_its_chosen_kernel_with_the_same_outputs(full, few):
    """CSRLinear chooses per use: more than FEW_ROWS rows (`full`) or at most (`few`, batch 1);
    both kernels give the dense layer's outputs, and the record names what runs."""
    model = fcl(0.9)
    layer = model.net[0]
    x = torch.randn(29, 784)
    with torch.no_grad():
        sparse = CSRLinear(layer, full=full, few=few)
        for batch in (29, 4, 1):
            torch.testing.assert_close(sparse(x[:batch]), layer(x[:batch]), atol=1e-5, rtol=1e-5)
    assert sparse.kernel() == (
        "csr" if full and few else f"full={'csr' if full else 'dense'} few={'csr' if few else 'dense'}"
    )


@pytest.mark.slow
def test_a_run_exports_a_model_that_takes_raw_pixels(run_cli, tmp_path):
    """Item 11 end to end: `ssmoe train`'s file and `ssmoe export RUN_DIR`'s file both carry the
    preprocessing, and on the dataset's raw test inputs they score exactly the run's test/acc."""
    from conftest import search_runs

    from ssmoe_cli.data.digits import Digits

    run_cli("train", "model=fcl", "data=digits", "trainer.max_epochs=2", "prune=magnitude", "prune.start=0",
            "prune.rounds=1", "prune.min_retrain=1", "trainer.enable_progress_bar=false",
            "timing.repeats_b1=3", "timing.repeats_b256=3")  # fmt: skip
    runs = search_runs(tmp_path)
    assert len(runs) == 1
    test_acc = float(runs["metrics.test/acc"].iloc[0])
    (run_dir,) = tmp_path.glob("logs/train/runs/*")
    out = run_cli("export", str(run_dir), "--output", str(tmp_path / "again.safetensors")).stdout
    assert "layers as CSR" in out
    raw = Digits(in_features=64, num_classes=10).load()  # 8x8 pixels 0..16, as scikit-learn ships them
    x, y = torch.as_tensor(raw.x_test), torch.as_tensor(raw.y_test)
    for path in (run_dir / "model.safetensors", tmp_path / "again.safetensors"):
        model = load_model(path)
        assert model.class_names == tuple("0123456789")
        with torch.no_grad():
            acc = float((model(x).logits.argmax(1) == y).float().mean())
        assert acc == pytest.approx(test_acc, abs=1e-6), path
    info = run_cli("export", "--info", str(tmp_path / "again.safetensors")).stdout
    assert "ssmoe-sparse/1" in info and "net.0.weight" in info and "0.9000 sparse" in info
    assert "preprocessing: flatten to 64 values, then (x - " in info and "classes: 0=0, 1=1" in info
    bad = run_cli("export", str(tmp_path), check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("ssmoe: error:")


@pytest.mark.slow
def test_a_run_records_the_kernels_and_dispatch_it_timed(run_cli, tmp_path):
    """kernels.json: each layer's kernel and the mixture's dispatch at batch 1 and 256, as timed."""
    import mlflow
    from conftest import search_runs

    run_cli("train", "model=sgmoe", "data=digits", "trainer=debug", "prune=magnitude", "prune.start=0",
            "prune.rounds=1", "prune.min_retrain=1", "prune.target_sparsity=0.9", "threads=1",
            "timing.repeats_b1=3", "timing.repeats_b256=3")  # fmt: skip
    (run_id,) = search_runs(tmp_path).run_id
    path = mlflow.MlflowClient().download_artifacts(run_id, "kernels.json", str(tmp_path))
    record = json.loads(Path(path).read_text())
    # The file carries its preprocessing: the network is the `model` inside the loaded wrapper.
    assert set(record["layers"]) == {"model.gate.w_gate", "model.layers.0", "model.layers.1"}
    # sgmoe, E = 8, k = 2: dense at batch 1; at 256 sorted, or capacity where an expert layer's full pass runs CSR
    csr_full = any(record["layers"][f"model.layers.{i}"].startswith("full=csr") for i in (0, 1))
    assert record["dispatch"] == {"model": {"b1": "dense", "b256": "capacity" if csr_full else "sorted"}}
    both = ("csr", "dense")
    expert_kernels = {f"full={a} few={b} one={c}" for a in both for b in both for c in both}
    assert record["layers"]["model.gate.w_gate"] in {"dense", "csr", "full=csr few=dense", "full=dense few=csr"}
    for name in ("model.layers.0", "model.layers.1"):
        assert record["layers"][name] in expert_kernels | {"dense"}
