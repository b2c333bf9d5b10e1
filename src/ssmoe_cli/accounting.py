"""Parameter, FLOP and latency accounting, read from the masks of the layers (not from configs).

Definitions (the metrics contract, docs/configuration.md):
- params/total: every parameter, masked or not.
- params/nonzero: parameters neither masked out nor exactly zero.
- params/active_per_sample: mean number of nonzero parameters one sample's forward pass uses.
- flops/per_sample: mean multiply-adds of the nonzero weights one sample's forward pass uses.
- compression/ratio_vs_fcl: nonzero parameters of the baseline network / params/nonzero.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from ssmoe_cli.models.layers import MaskedLinear, masked_layers


@dataclass(frozen=True)
class Accounting:
    params_total: int
    params_nonzero: int
    active_per_sample: float
    flops_per_sample: float

    def metrics(self) -> dict[str, float]:
        return {
            "params/total": float(self.params_total),
            "params/nonzero": float(self.params_nonzero),
            "params/active_per_sample": float(self.active_per_sample),
            "flops/per_sample": float(self.flops_per_sample),
        }


def total_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def nonzero_params(module: nn.Module) -> int:
    """Nonzero parameters; masked weights count as zero whatever their stored value."""
    masked = {id(m.weight): m for m in masked_layers(module)}
    count = 0
    for p in module.parameters():
        owner = masked.get(id(p))
        count += owner.nonzero_weights() if owner is not None else int(torch.count_nonzero(p))
    return count


def nonzero_macs(module: nn.Module) -> int:
    """Multiply-adds of one pass of one sample through every MaskedLinear of the module (nonzero weights)."""
    return sum(m.nonzero_weights() for m in masked_layers(module) if isinstance(m, MaskedLinear))


def dense_accounting(module: nn.Module) -> Accounting:
    """Accounting of a network whose every weight is used by every sample (FCL, baselines)."""
    nonzero = nonzero_params(module)
    return Accounting(total_params(module), nonzero, float(nonzero), float(nonzero_macs(module)))


def account(model: nn.Module, x: torch.Tensor | None = None) -> Accounting:
    """The model's own accounting if it has one (MoE: depends on routing of x), else dense."""
    fn = getattr(model, "accounting", None)
    return fn(x) if callable(fn) else dense_accounting(model)


@torch.inference_mode()
def latency_ms(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int = 5) -> float:
    """Median wall time of one forward pass over x, in milliseconds."""
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model(x)
    times = []
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    model.train(was_training)
    return statistics.median(times)
