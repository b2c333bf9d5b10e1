"""Inference-only accounting (issue 11, item 2): weights only training reads (SGMoE's W_noise) are in
no count, no pruning target and not in the exported file, and are reported as params/train_only;
float buffers inference reads (the t-SNE gate's centres and temperature) count in total, nonzero
and active alike; the gate's share of nonzero and active parameters is reported."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import safe_open, save_file

from ssmoe_cli import metrics as M
from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.export import export_model, load_model, read_export
from ssmoe_cli.models.accounting import account, nonzero_params
from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
from ssmoe_cli.models.gating.ptsne import PTSNEGate
from ssmoe_cli.models.gating.softmax import SoftmaxGate
from ssmoe_cli.models.moe import MixtureOfExperts
from ssmoe_cli.models.registry import build

pytestmark = pytest.mark.usefixtures("one_thread")

NOISE = "gate.w_noise.weight"


def shipped_config(model: str) -> dict:
    """The shipped model config on Fashion-MNIST's sizes (784 inputs, 10 classes), resolved."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "data=fashion_mnist", "hydra.runtime.output_dir=/tmp"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def trained_like(model: MixtureOfExperts) -> MixtureOfExperts:
    """W_g and W_noise start at zero (Shazeer et al.): give both trained-looking values."""
    torch.manual_seed(0)
    with torch.no_grad():
        model.gate.w_gate.weight.normal_()
        model.gate.w_noise.weight.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def sgmoe_config() -> dict:
    return shipped_config("sgmoe")


def test_w_noise_is_in_no_inference_count_and_is_reported_as_train_only(sgmoe_config):
    model = trained_like(build(sgmoe_config))
    x = torch.randn(64, 784)
    acc = account(model, x)
    every_param = sum(p.numel() for p in model.parameters())
    assert acc.train_only == 784 * 8 == 6272
    assert acc.params_total == every_param - 6272  # SGMoE has no float buffers
    assert acc.metrics()[M.PARAMS_TRAIN_ONLY] == 6272
    # W_noise's values change nothing inference counts: zero it and every count stays the same.
    with torch.no_grad():
        model.gate.w_noise.weight.zero_()
    again = account(model, x)
    assert (again.params_total, again.params_nonzero) == (acc.params_total, acc.params_nonzero)
    assert (again.active_per_sample, again.flops_per_sample) == (acc.active_per_sample, acc.flops_per_sample)
    assert again.train_only == 6272  # a count of parameters, zero or not


def test_gate_shares_by_hand_on_a_tiny_sgmoe():
    # E=3 experts 2 -> 2 -> 2, k=1, isolated: an expert is 2*2+2 + 2*2+2 = 12 parameters.
    torch.manual_seed(0)
    gate = NoisyTopKGate(2, 3, k=1)
    model = trained_like(MixtureOfExperts(2, 2, gate, num_experts=3, k=1, expert_hidden=(2,)))
    acc = account(model, torch.randn(20, 2))
    assert (acc.params_total, acc.params_nonzero, acc.train_only) == (3 * 12 + 6, 3 * 12 + 6, 6)
    assert acc.active_per_sample == 12 + 6 and acc.flops_per_sample == 4 + 4 + 6
    shares = acc.metrics()
    assert shares[M.PARAMS_GATE_NONZERO] == 6
    assert shares[M.GATE_SHARE_NONZERO] == pytest.approx(6 / 42)
    assert shares[M.GATE_SHARE_ACTIVE] == pytest.approx(6 / 18)
    # Half of W_g masked: the gate has 3 nonzero weights left, in both shares.
    mask = torch.tensor([[True, False]] * 3)
    model.gate.w_gate.set_mask(mask)
    shares = account(model, torch.randn(20, 2)).metrics()
    assert shares[M.PARAMS_GATE_NONZERO] == 3
    assert shares[M.GATE_SHARE_NONZERO] == pytest.approx(3 / 39)
    assert shares[M.GATE_SHARE_ACTIVE] == pytest.approx(3 / 15)


@pytest.mark.parametrize("centres", ["kmeans", "learned"])  # a buffer, or a parameter: counted once
def test_ptsne_counts_centres_and_temperature_in_total_nonzero_and_active(centres):
    torch.manual_seed(0)
    # map network 6 -> 5 -> 2: 6*5+5 + 5*2+2 = 47; 4 centres x 2 = 8; temperature 1: a gate of 56.
    gate = PTSNEGate(6, 4, k=1, hidden=(5,), centres=centres)
    model = MixtureOfExperts(6, 2, gate, num_experts=4, k=1, expert_hidden=(3,)).eval()
    acc = account(model, torch.randn(30, 6))
    experts = 4 * (6 * 3 + 3 + 3 * 2 + 2)  # 4 experts of 29
    assert acc.params_total == acc.params_nonzero == experts + 56
    assert acc.active_per_sample == 29 + 56
    assert acc.flops_per_sample == (18 + 6) + (30 + 10 + 2 * 4)  # 2 multiply-adds per centre
    assert acc.train_only == 0
    shares = acc.metrics()
    assert shares[M.PARAMS_GATE_NONZERO] == 56
    assert shares[M.GATE_SHARE_NONZERO] == pytest.approx(56 / (experts + 56))
    assert shares[M.GATE_SHARE_ACTIVE] == pytest.approx(56 / 85)


def test_the_shipped_ptsne_moe_counts_its_centres_and_temperature():
    model = build(shipped_config("ptsne_moe")).eval()
    every_param = sum(p.numel() for p in model.parameters())
    acc = account(model, torch.randn(16, 784))
    assert acc.params_total == every_param + 8 * 2 + 1 and acc.train_only == 0


def test_a_dense_network_has_no_train_only_params_and_no_gate_share():
    from ssmoe_cli.models.fcl import FCL

    metrics = account(FCL(784, 10).eval()).metrics()
    assert metrics[M.PARAMS_TRAIN_ONLY] == 0 and metrics[M.PARAMS_TOTAL] == 266_610
    assert not {M.PARAMS_GATE_NONZERO, M.GATE_SHARE_NONZERO, M.GATE_SHARE_ACTIVE} & set(metrics)


@pytest.mark.parametrize("name", ["noisy_topk", "softmax", "ptsne"])
def test_every_gate_is_read_whole_its_active_params_are_its_nonzero_params(name):
    torch.manual_seed(0)
    gate = {
        "noisy_topk": lambda: NoisyTopKGate(10, 4, k=2),
        "softmax": lambda: SoftmaxGate(10, 4),
        "ptsne": lambda: PTSNEGate(10, 4, k=2, hidden=(6,)),
    }[name]()
    for layer in (m for m in gate.modules() if hasattr(m, "mask")):
        with torch.no_grad():
            layer.weight.normal_()
        layer.set_mask(torch.rand(layer.weight.shape) > 0.5)  # pruned: still equal
    assert gate.active_params() == nonzero_params(gate) > 0
    if name == "noisy_topk":
        assert gate.active_params() == gate.w_gate.nonzero_weights()  # never W_noise's


# -- the exported file -----------------------------------------------------------------------------
def test_the_exported_file_leaves_w_noise_out_and_reloads_predicting_identically(tmp_path, sgmoe_config):
    model = trained_like(build(sgmoe_config))
    new = export_model(model, sgmoe_config, tmp_path / "new.safetensors")
    model.gate.w_noise.train_only = False  # what files held before: W_noise written like any weight
    old = export_model(model, sgmoe_config, tmp_path / "old.safetensors")
    model.gate.w_noise.train_only = True
    assert new.csr_tensors == old.csr_tensors == 0  # dense: the difference is W_noise's float32
    stored = {
        p: sum(t.numel() * t.element_size() for t in read_export(p).tensors.values()) for p in (old.path, new.path)
    }
    assert stored[old.path] - stored[new.path] == 784 * 8 * 4
    assert 784 * 8 * 4 <= old.bytes - new.bytes < 784 * 8 * 4 + 200  # (+ its header entry)
    assert NOISE not in read_export(new.path).tensors and "gate.w_gate.weight" in read_export(new.path).tensors
    assert read_export(new.path).train_only == ["gate.w_noise"] and read_export(old.path).train_only == []

    x = torch.randn(300, 784)
    for kernels in (False, True):
        loaded = load_model(new.path, sparse_kernels=kernels)
        assert torch.equal(loaded(x).logits.argmax(1), model(x).logits.argmax(1))
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
        # The left-out tensors keep their constructor values: W_noise zero, its mask whole.
        assert not loaded.gate.w_noise.weight.any() and loaded.gate.w_noise.mask.all()
    assert torch.equal(load_model(new.path, sparse_kernels=False)(x).logits, model(x).logits)
    # A file written before the rule still loads, with its stored W_noise.
    assert torch.equal(load_model(old.path, sparse_kernels=False).gate.w_noise.weight, model.gate.w_noise.weight)


def test_a_file_missing_an_inference_tensor_is_still_refused_in_one_line(tmp_path, sgmoe_config):
    model = trained_like(build(sgmoe_config))
    path = export_model(model, sgmoe_config, tmp_path / "m.safetensors").path
    with safe_open(str(path), framework="pt") as fh:
        metadata, tensors = fh.metadata(), {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
    del tensors["gate.w_gate.weight"]
    save_file(tensors, str(tmp_path / "cut.safetensors"), metadata=metadata)
    with pytest.raises(SsmoeError, match="tensors do not fit its model config") as err:
        load_model(tmp_path / "cut.safetensors")
    message = str(err.value)
    assert "gate.w_gate.weight" in message and "\n" not in message and NOISE not in message


# -- a real run ------------------------------------------------------------------------------------
def test_a_sgmoe_run_logs_train_only_params_and_gate_shares(run_cli, tmp_path):
    from conftest import FAST, search_runs

    out = run_cli("train", "model=sgmoe", "data=digits", *FAST).stdout
    assert "params/train_only" in out and "params/gate_share_active" in out  # the console summary
    run = search_runs(tmp_path).iloc[0]
    assert run[f"metrics.{M.PARAMS_TRAIN_ONLY}"] == 64 * 8  # W_noise: digits' 64 inputs x 8 experts
    gate_nonzero, nonzero = run[f"metrics.{M.PARAMS_GATE_NONZERO}"], run[f"metrics.{M.PARAMS_NONZERO}"]
    assert 0 < gate_nonzero <= 64 * 8  # W_g only
    assert run[f"metrics.{M.GATE_SHARE_NONZERO}"] == pytest.approx(gate_nonzero / nonzero)
    share_active = run[f"metrics.{M.GATE_SHARE_ACTIVE}"]
    assert share_active == pytest.approx(gate_nonzero / run[f"metrics.{M.PARAMS_ACTIVE}"])
    (run_dir,) = tmp_path.glob("logs/train/runs/*")
    assert NOISE not in read_export(run_dir / "model.safetensors").tensors
