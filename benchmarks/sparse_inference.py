"""Exported sparse models vs the dense FCL: inference latency and file size, one run.

    flock /tmp/ssmoe-bench.lock python benchmarks/sparse_inference.py                  # arch=lenet
    flock /tmp/ssmoe-bench.lock python benchmarks/sparse_inference.py --arch lenet large

For each arch and model (fcl, sgmoe, ptsne_moe with their configs) at sparsity 0, 0.9, 0.95 and 0.98:
export to safetensors, reload from weights only with CSR kernels where they measure faster (exactly
what `ssmoe train` does before timing), and time a forward pass at batch 1 and 256 on Fashion-MNIST
test images. Ratios are against that arch's dense FCL (sparsity 0) measured in the same run.

Routing follows trained gates, as a stand-in for a full run: every model is trained briefly on
Fashion-MNIST first (--train-images images, one epoch, Adam; the t-SNE gate pretrains its map as a
run does), then magnitude masks are applied (as prune=magnitude; latency does not depend on
retraining). The table prints the test batch's expert-load CV^2 (trained runs show 0.07-0.15 on
lenet, docs/results/paper.md) and which kernels and dispatch the exported model runs.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ssmoe_cli.export import dispatch_choices, export_model, kernels, load_model, use_sparse_kernels
from ssmoe_cli.models.base import routing_of
from ssmoe_cli.models.registry import build as build_model
from ssmoe_cli.prune.masks import prune_to, target_layers
from ssmoe_cli.timing import latency_ms


def configs(model: str, arch: str) -> tuple[dict, object]:
    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"arch={arch}", "hydra.runtime.output_dir=/tmp"])
    return OmegaConf.to_container(cfg.model, resolve=True), cfg.data


def trained(config: dict, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    """The model built from `config`, prepared and trained one epoch on (x, y) in batches of 128."""
    torch.manual_seed(0)
    model = build_model(config)
    model.prepare(x, torch.Generator().manual_seed(0))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for idx in torch.randperm(len(x)).split(128):
        out = model(x[idx])
        loss = F.cross_entropy(out.logits, y[idx]) + sum(out.aux.values(), torch.zeros(()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def load_cv2(model: torch.nn.Module, x: torch.Tensor) -> float:
    routing = routing_of(model)
    if routing is None:
        return float("nan")
    load = routing.active_experts(x).float().sum(0)
    return float(load.var(unbiased=False) / load.mean() ** 2)


def summary(model: torch.nn.Module) -> str:
    """Kernels and dispatch, short: how many layers run CSR (c) and the dispatch at b1/b256."""
    used = kernels(model).values()
    csr = sum("csr" in k for k in used)
    dispatch = next(iter(dispatch_choices(model).values()), None)
    return f"{csr}/{len(used)} csr" + (f", {dispatch['b1']}/{dispatch['b256']}" if dispatch else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fcl", "sgmoe", "ptsne_moe"])
    parser.add_argument("--arch", nargs="+", default=["lenet"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.9, 0.95, 0.98])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=10000)
    args = parser.parse_args()
    _, data_cfg = configs("fcl", "lenet")
    data = instantiate(data_cfg)
    data.setup()
    x_train, y_train = (t[: args.train_images] for t in data.train_set.tensors)
    x = data.test_set.tensors[0][:256]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(x_train)} training images")
    head = (
        f"{'arch':6} {'model':10} {'sparsity':>8} {'file KB':>8} {'x smaller':>9} {'load CV2':>8} "
        f"{'b1 ms':>7} {'b1 x':>6} {'b256 ms':>8} {'b256 x':>7}  kernels, dispatch b1/b256"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            rows = []
            for name in args.models:
                config, _ = configs(name, arch)
                base_model = trained(config, x_train, y_train)
                for sparsity in args.sparsities:
                    model = copy.deepcopy(base_model)
                    if sparsity > 0:
                        layers = target_layers(model)
                        prune_to(model, {n: m.weight.detach().abs() for n, m in layers.items()}, sparsity)
                    path = Path(tmp) / f"{arch}-{name}-{sparsity}.safetensors"
                    size = export_model(model, config, path).bytes
                    loaded = load_model(path, sparse_kernels=False)
                    use_sparse_kernels(loaded, inputs=x)
                    b1 = latency_ms(loaded, x[:1], repeats=args.repeats)
                    b256 = latency_ms(loaded, x, repeats=max(10, args.repeats // 4))
                    rows.append((name, sparsity, size, load_cv2(model, x), b1, b256, summary(loaded)))
            base = next((r for r in rows if r[0] == "fcl" and r[1] == 0.0), rows[0])
            print(f"\n{head}")
            for name, sparsity, size, cv2, b1, b256, what in rows:
                print(
                    f"{arch:6} {name:10} {sparsity:8.2f} {size / 1024:8.1f} {base[2] / size:9.2f} {cv2:8.3f} "
                    f"{b1:7.3f} {base[4] / b1:6.2f} {b256:8.3f} {base[5] / b256:7.2f}  {what}"
                )
    print("\nx smaller / b1 x / b256 x: the dense FCL's value / this value (above 1 = smaller or faster)")


if __name__ == "__main__":
    main()
