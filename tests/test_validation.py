"""Config validation: each impossible setting is one line naming the key, the value and the range."""

from __future__ import annotations

import pytest

from ssmoe_cli.validation import validate


def base() -> dict:
    return {
        "seed": 0,
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
        "trainer": {"max_epochs": 15, "accelerator": "cpu"},
        "data": {"in_features": 784, "num_classes": 10, "batch_size": 128, "eval_batch_size": 1024},
        "model": {"num_experts": 16, "k": 2, "expert_hidden": [64]},
        "gating": {"perplexity": 30.0, "tsne_batch_size": 1000, "hidden": [16], "pretrain_epochs": 20},
        "topology": {"degree": 2, "fan_out": 4},
        "prune": {"target_sparsity": 0.9, "initial_sparsity": 0.0, "rounds": 3},
        "baseline": {"in_features": 784, "num_classes": 10, "hidden": [300, 100]},
    }


def with_(path: str, value) -> dict:
    cfg = base()
    node = cfg
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


def test_the_default_config_is_valid():
    assert validate(base(), gpu_available=lambda: False) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("model.k", 17, "model.k=17: must be between 1 and model.num_experts=16"),
        ("model.k", 0, "model.k=0: must be between 1"),
        ("prune.target_sparsity", 1.0, "prune.target_sparsity=1.0: must be in [0, 1)"),
        ("prune.target_sparsity", -0.1, "prune.target_sparsity=-0.1: must be in [0, 1)"),
        ("prune.density", 0.0, "prune.density=0.0: must be in (0, 1]"),
        ("gating.perplexity", 1000, "gating.perplexity=1000: must be < gating.tsne_batch_size=1000"),
        ("optim.lr", 0, "optim.lr=0: must be a finite number > 0"),
        ("trainer.max_epochs", -1, "trainer.max_epochs=-1: must be an integer > 0"),
        ("trainer.max_epochs", 1.5, "trainer.max_epochs=1.5: must be an integer > 0"),
        ("data.batch_size", 0, "data.batch_size=0: must be an integer > 0"),
        ("seed", "abc", "seed='abc': must be an integer in [0, 4294967295]"),
        ("seed", 2**32, "seed=4294967296: must be an integer in [0, 4294967295]"),
        ("seed", True, "seed=True: must be an integer"),
        ("model.expert_hidden", [64, 0], "model.expert_hidden=[64, 0]: sizes must be integers > 0"),
        ("topology.degree", 16, "topology.degree=16: must be in [0, model.num_experts=16)"),
        ("topology.fan_out", 65, "topology.fan_out=65: must be in [0, 64]"),
        ("prune.initial_sparsity", 0.95, "prune.target_sparsity=0.9: below prune.initial_sparsity=0.95"),
        ("baseline.in_features", 64, "baseline.in_features=64: does not match data.in_features=784"),
        ("model.capacity_factor", -1, "model.capacity_factor=-1: must be a finite number > 0, or null"),
    ],
)
def test_each_impossible_setting_is_named(path, value, expected):
    errors = validate(with_(path, value), gpu_available=lambda: True)
    assert len(errors) == 1 and errors[0].startswith(expected), errors
    assert "\n" not in errors[0]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "fast"])
@pytest.mark.parametrize(
    "path",
    ["optim.lr", "optim.weight_decay", "gating.perplexity", "prune.target_sparsity", "prune.density"],
)
def test_non_finite_or_non_numeric_values_are_refused_wherever_a_number_is_required(path, value):
    errors = validate(with_(path, value), gpu_available=lambda: True)
    assert errors and errors[0].startswith(f"{path}={value!r}: must be"), errors


def test_gpu_trainer_without_gpu():
    errors = validate(with_("trainer.accelerator", "gpu"), gpu_available=lambda: False)
    assert errors == ["trainer.accelerator=gpu: no CUDA GPU is visible here; use trainer=cpu"]
    assert validate(with_("trainer.accelerator", "gpu"), gpu_available=lambda: True) == []


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=abc", "ssmoe: error: seed='abc': must be an integer in [0, 4294967295] (seed=1)"),
        ("optim.lr=inf", "ssmoe: error: optim.lr=inf: must be a finite number > 0"),
        ("optim.lr=nan", "ssmoe: error: optim.lr=nan: must be a finite number > 0"),
    ],
)
def test_bad_numbers_on_the_command_line_are_one_line_before_any_run(run_cli, tmp_path, override, expected):
    proc = run_cli("train", "model=fcl", "data=digits", override, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [expected]
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched


def test_several_problems_are_all_reported(run_cli):
    proc = run_cli("train", "model=sgmoe", "model.k=0", "optim.lr=-1", "logger=none", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ssmoe: error:")]
    assert len(lines) == 2
    assert any("optim.lr=-1" in line for line in lines) and any("model.k=0" in line for line in lines)
