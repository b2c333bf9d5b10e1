"""The one masked-weight mechanism every layer of every model uses, so that pruning and accounting
see all weights: MaskedLinear (a plain linear layer) and ExpertLinear (one weight matrix per expert,
stacked, for the batched expert computations of a mixture of experts).

Each holds a boolean ``mask`` buffer of the weight's shape (saved with the state dict, 1 byte per
weight). The forward pass uses ``weight * mask``, so a masked weight gets no gradient; pruning code
zeroes a weight when it masks it and re-applies the mask after optimizer steps (ssmoe_cli.prune).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Masked(nn.Module):
    """Base of the masked layers: a ``weight`` parameter, a same-shape boolean ``mask``, a ``bias``."""

    weight: nn.Parameter
    mask: torch.Tensor
    bias: nn.Parameter | None
    # What the layer is in its model, for selecting pruning targets: "hidden" (FCL and expert
    # hidden layers), "output" (the last layer that produces logits), "route" (inter-expert
    # routes), "gate" (the gating network). Models set it where the default is wrong.
    role: str = "hidden"
    # True for a layer only training uses (SGMoE's noise network W_noise): inference never reads it,
    # so accounting, pruning targets and the exported file leave it out (see `train_only_layers`).
    train_only: bool = False

    def _init_mask(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Install a new mask and zero the weights it removes."""
        self.mask.copy_(mask.to(dtype=torch.bool))
        self.weight.mul_(self.mask)

    def masked_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (differentiable)."""
        return self.weight * self.mask

    def nonzero_weights(self) -> int:
        with torch.no_grad():
            return int(torch.count_nonzero(self.masked_weight()))

    def nonzero_params(self) -> int:
        bias = int(torch.count_nonzero(self.bias)) if self.bias is not None else 0
        return self.nonzero_weights() + bias


class MaskedLinear(Masked, nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._init_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class ExpertLinear(Masked):
    """E independent linear maps stacked: weight (E, out, in), bias (E, out).

    ``forward(x)`` takes x of shape (E, N, in) (row block e goes through expert e) and returns
    (E, N, out) with one batched matmul. Initialised like nn.Linear, expert by expert.
    """

    def __init__(self, num_experts: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num_experts, self.in_features, self.out_features = num_experts, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features)) if bias else None
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)  # = nn.Linear's kaiming_uniform(a=sqrt(5)) bound
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self._init_mask()

    def forward(self, x: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        """x: (E, N, in), block e through expert e; or with `experts` (M,), block m through expert
        experts[m] (the weights are gathered: only those experts' matrices are read)."""
        if experts is None:
            w, b = self.masked_weight(), self.bias
        else:  # gather first, then mask: only the selected experts' matrices are touched
            w = self.weight[experts] * self.mask[experts]
            b = self.bias[experts] if self.bias is not None else None
        out = torch.bmm(x, w.transpose(1, 2))
        return out + b.unsqueeze(1) if b is not None else out

    def gather_rows(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masked weight rows and biases of output units given as flat indices e * out + j (any shape)."""
        w = self.weight.reshape(-1, self.in_features)[units] * self.mask.reshape(-1, self.in_features)[units]
        return w, (self.bias.reshape(-1)[units] if self.bias is not None else None)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, in_features={self.in_features}, out_features={self.out_features}"


def masked_layers(module: nn.Module) -> list[Masked]:
    return [m for m in module.modules() if isinstance(m, Masked)]


def train_only_layers(module: nn.Module) -> dict[str, Masked]:
    """The masked layers only training uses, by qualified name in `module`."""
    return {name: m for name, m in module.named_modules() if isinstance(m, Masked) and m.train_only}


def set_role(module: nn.Module, role: str) -> nn.Module:
    """Give every masked layer inside `module` the same role (e.g. a whole gate network)."""
    for layer in masked_layers(module):
        layer.role = role
    return module


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0) -> nn.Sequential:
    """MaskedLinear layers of the given sizes with activations between them (none after the last).
    The last layer's role is "output", the others "hidden"."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(MaskedLinear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    layers[-1].role = "output"
    return nn.Sequential(*layers)
