"""The `arch` config group: every model's sizes and the baseline per architecture, sizes in and out
from the data, the parameter counts docs/configuration.md gives, and a real run at arch=large."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, run_in_folders, search_runs
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ssmoe_cli.models.accounting import total_params, train_only_params

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ("fcl", "moe", "sgmoe", "ptsne_moe")
# arch -> (FCL and baseline hidden sizes, experts, k, expert hidden sizes, baseline option)
ARCHS = {
    "lenet": ([300, 100], 8, 2, [64], "lenet_300_100"),
    "large": ([1000, 1000, 1000], 24, 6, [128, 128], "mlp_1000_1000_1000"),
    "small": ([100, 100], 8, 2, [20, 28], "mlp_100_100"),
}
# The counts docs/configuration.md documents: params/total (train-only params of sgmoe's noise network apart).
DOCUMENTED = {
    ("lenet", 784, 10): {"fcl": 266_610, "moe": 413_400, "sgmoe": 413_392, "ptsne_moe": 420_371},
    ("large", 784, 10): {"fcl": 2_797_010, "moe": 2_857_608, "sgmoe": 2_857_584, "ptsne_moe": 2_875_987},
    ("small", 40, 10): {"fcl": 15_210, "moe": 13_912, "sgmoe": 13_904, "ptsne_moe": 16_083},
    ("small", 16, 26): {"fcl": 14_426, "moe": 13_592, "sgmoe": 13_584, "ptsne_moe": 15_571},
}


def mlp(sizes: list[int]) -> int:
    """Weights and biases of a dense network of these layer sizes: sum of n_in * n_out + n_out."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def expected(arch: str, model: str, n: int, c: int) -> int:
    """params/total by hand, from the shipped gate and topology defaults."""
    fcl_hidden, experts, _, hidden, _ = ARCHS[arch]
    if model == "fcl":
        return mlp([n, *fcl_hidden, c])
    body = experts * mlp([n, *hidden, c])
    if model == "moe":  # softmax gate: one linear layer with bias
        return body + n * experts + experts
    if model == "sgmoe":  # W_g without bias (W_noise is train-only)
        return body + n * experts
    # ptsne_moe: gate net n -> 16 -> 2, a 2-D centre per expert, one temperature; small-world routes:
    # each expert reads degree (2) x fan_out (4) source units into its second layer, no bias.
    second = [*hidden, c][1]
    return body + mlp([n, 16, 2]) + 2 * experts + 1 + experts * 2 * 4 * second


def composed(*overrides: str):
    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def sizes(n: int, c: int) -> list[str]:
    return ["data=synthetic", f"data.in_features={n}", f"data.num_classes={c}"]


@pytest.mark.parametrize("arch, n, c", list(DOCUMENTED), ids=[f"{a}-{n}-{c}" for a, n, c in DOCUMENTED])
def test_every_model_of_every_arch_has_the_documented_size(arch, n, c):
    for model in MODELS:
        cfg = composed(f"model={model}", f"arch={arch}", *sizes(n, c))
        built = instantiate(cfg.model)
        assert total_params(built) == expected(arch, model, n, c) == DOCUMENTED[arch, n, c][model], model
        assert train_only_params(built) == (n * ARCHS[arch][1] if model == "sgmoe" else 0)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sizes_flow_from_the_data_into_every_model_and_the_baseline(arch):
    """16 features, 26 classes (letter's sizes): every arch's experts and routes still fit."""
    for model in MODELS:
        cfg = composed(f"model={model}", f"arch={arch}", *sizes(16, 26))
        built = instantiate(cfg.model)
        assert total_params(built) == expected(arch, model, 16, 26), model
        assert built(torch.randn(5, 16)).logits.shape == (5, 26)
    assert total_params(instantiate(cfg.baseline)) == expected(arch, "fcl", 16, 26)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_arch_sets_every_model_and_picks_its_baseline(arch):
    fcl_hidden, experts, k, hidden, baseline = ARCHS[arch]
    cfg = composed("model=ptsne_moe", f"arch={arch}")
    assert cfg.hydra.runtime.choices.baseline == baseline
    assert list(cfg.baseline.hidden) == fcl_hidden  # the dense reference is the arch's FCL
    assert (cfg.model.num_experts, cfg.model.k, list(cfg.model.expert_hidden)) == (experts, k, hidden)
    assert (cfg.gating.num_experts, cfg.gating.k) == (experts, k)
    assert list(composed("model=fcl", f"arch={arch}").model.hidden) == fcl_hidden
    moe = composed("model=moe", f"arch={arch}").model
    assert moe.num_experts == moe.k == experts  # the dense softmax mixture uses every expert
    # The command line still wins over the arch's choices.
    cfg = composed("model=sgmoe", f"arch={arch}", "baseline=lenet_300_100", "model.num_experts=5")
    assert list(cfg.baseline.hidden) == [300, 100] and cfg.hydra.runtime.choices.baseline == "lenet_300_100"
    assert cfg.model.num_experts == cfg.gating.num_experts == 5


def test_the_default_is_lenet_with_the_values_of_before_the_arch_group():
    cfg = composed()
    assert cfg.hydra.runtime.choices.arch == "lenet" and cfg.hydra.runtime.choices.baseline == "lenet_300_100"
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert (model["num_experts"], model["k"], model["expert_hidden"]) == (8, 2, [64])
    assert list(cfg.baseline.hidden) == [300, 100]


@pytest.mark.slow
def test_arch_large_trains_and_measures_against_its_own_baseline(tmp_path, store_template):
    common = ["arch=large", "data=digits", "threads=1", *FAST]
    done = run_in_folders(
        tmp_path, {"fcl": ["train", "model=fcl", *common], "sgmoe": ["train", "model=sgmoe", *common]}, store_template
    )
    dense = mlp([64, 1000, 1000, 1000, 10])  # the arch's FCL on digits: 2,068,010
    runs = {}
    for name, (folder, proc) in done.items():
        assert proc.returncode == 0, proc.stderr
        found = search_runs(folder)
        assert len(found) == 1
        runs[name] = found.iloc[0].to_dict()
    for name, run in runs.items():
        assert run["status"] == "FINISHED"
        assert run["tags.arch"] == "large" and run["tags.baseline"] == "mlp_1000_1000_1000"
        assert run["metrics.size/dense_bytes"] == 4 * dense  # the baseline's float32 parameters
        assert run["metrics.params/total"] == expected("large", name, 64, 10)
        ratio = dense / run["metrics.params/nonzero"]
        assert math.isclose(run["metrics.compression/ratio_vs_fcl"], ratio, rel_tol=1e-9)
    assert runs["fcl"]["metrics.compression/ratio_vs_fcl"] == 1.0
