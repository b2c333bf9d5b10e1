"""Exported sparse models vs the dense FCL baseline: inference latency and file size, one run.

    python benchmarks/sparse_inference.py

For each model (fcl = LeNet-300-100, sgmoe, ptsne_moe with their default configs) at sparsity 0,
0.9, 0.95 and 0.98 (magnitude masks on the hidden, output and route layers, as prune=magnitude):
export to safetensors, reload from weights only with CSR kernels where they measure faster
(exactly what `ssmoe train` does before timing), and time a forward pass at batch 1 and 256.
Latency does not depend on training, so the models are untrained (random weights, inputs N(0,1);
the t-SNE gate is not pretrained). Ratios are against the dense FCL (sparsity 0) measured here.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from ssmoe_cli.export import export_model, load_model, use_sparse_kernels
from ssmoe_cli.models.registry import build as build_model
from ssmoe_cli.prune.masks import prune_to, target_layers
from ssmoe_cli.timing import latency_ms


def build(model: str) -> tuple[torch.nn.Module, dict]:
    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "hydra.runtime.output_dir=/tmp"])
    config = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    return build_model(config).eval(), config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fcl", "sgmoe", "ptsne_moe"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.9, 0.95, 0.98])
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    x = torch.randn(256, 784)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for sparsity in args.sparsities:
                model, config = build(name)
                if sparsity > 0:
                    layers = target_layers(model)
                    prune_to(model, {n: m.weight.detach().abs() for n, m in layers.items()}, sparsity)
                path = Path(tmp) / f"{name}-{sparsity}.safetensors"
                size = export_model(model, config, path).bytes
                loaded = load_model(path, sparse_kernels=False)
                csr = sum(use_sparse_kernels(loaded).values())
                b1 = latency_ms(loaded, x[:1], repeats=args.repeats)
                b256 = latency_ms(loaded, x, repeats=max(10, args.repeats // 4))
                rows.append((name, sparsity, size, csr, b1, b256))
    base = next(r for r in rows if r[0] == "fcl" and r[1] == 0.0) if any(r[0] == "fcl" for r in rows) else rows[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; baseline: {base[0]} at sparsity {base[1]}")
    print(
        f"{'model':10} {'sparsity':>8} {'file KB':>9} {'x smaller':>9} {'CSR layers':>10} "
        f"{'b1 ms':>8} {'b1 x':>6} {'b256 ms':>8} {'b256 x':>7}"
    )
    for name, sparsity, size, csr, b1, b256 in rows:
        print(
            f"{name:10} {sparsity:8.2f} {size / 1024:9.1f} {base[2] / size:9.2f} {csr:10d} "
            f"{b1:8.3f} {base[4] / b1:6.2f} {b256:8.3f} {base[5] / b256:7.2f}"
        )
    print("x smaller / b1 x / b256 x: baseline value / this value (above 1 = smaller or faster than the dense FCL)")


if __name__ == "__main__":
    main()
