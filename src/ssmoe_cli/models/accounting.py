"""Parameter and FLOP accounting, read from the masks of the layers (not from configs).

Definitions (the metrics contract, docs/configuration.md; names in ssmoe_cli.metrics):
- params/total: every parameter, masked or not.
- params/nonzero: parameters neither masked out nor exactly zero.
- params/active_per_sample: mean number of nonzero parameters one sample's forward pass uses.
- flops/per_sample: mean multiply-adds of the nonzero weights one sample's forward pass uses.
- compression/ratio_vs_fcl: nonzero parameters of the baseline network / params/nonzero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmoe_cli import metrics as names
from ssmoe_cli.models.base import Model
from ssmoe_cli.models.layers import MaskedLinear, masked_layers


@dataclass(frozen=True)
class Accounting:
    params_total: int
    params_nonzero: int
    active_per_sample: float
    flops_per_sample: float

    def metrics(self) -> dict[str, float]:
        return {
            names.PARAMS_TOTAL: float(self.params_total),
            names.PARAMS_NONZERO: float(self.params_nonzero),
            names.PARAMS_ACTIVE: float(self.active_per_sample),
            names.FLOPS: float(self.flops_per_sample),
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
    """A Model's own accounting (a mixture of experts' depends on the routing of x); any other
    nn.Module is counted as dense."""
    return model.accounting(x) if isinstance(model, Model) else dense_accounting(model)
