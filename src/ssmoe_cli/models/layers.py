"""MaskedLinear: the one linear layer every model uses, so that pruning and accounting see all weights.

The connectivity mask is a boolean buffer (saved with the state dict, 1 byte per weight). The forward
pass uses ``weight * mask``, so a masked weight gets no gradient; pruning code zeroes the weight when
it masks it and re-applies the mask after optimizer steps (see ssmoe_cli.prune).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Install a new mask and zero the weights it removes."""
        self.mask.copy_(mask.to(dtype=torch.bool))
        self.weight.mul_(self.mask)

    @torch.no_grad()
    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def nonzero_weights(self) -> int:
        return int(torch.count_nonzero(self.effective_weight()))

    def nonzero_params(self) -> int:
        bias = int(torch.count_nonzero(self.bias)) if self.bias is not None else 0
        return self.nonzero_weights() + bias


def masked_linears(module: nn.Module) -> list[MaskedLinear]:
    return [m for m in module.modules() if isinstance(m, MaskedLinear)]


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0) -> nn.Sequential:
    """MaskedLinear layers of the given sizes with activations between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(MaskedLinear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
