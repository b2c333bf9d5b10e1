"""Dense softmax gate of the adaptive mixture of local experts (Jacobs, Jordan, Nowlan, Hinton 1991).

Every expert gets a weight softmax(x W + b); nothing is sparse, so k is always num_experts. With
`z_loss` > 0, ST-MoE's router z-loss on the logits x W + b is added in training (base.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmoe_cli.models.gating.base import Gate, GateOutput, loss_weight, z_loss_aux
from ssmoe_cli.models.layers import MaskedLinear, set_role


class SoftmaxGate(Gate):
    """weights = softmax(x W + b) over ALL experts; indices = all experts by weight, descending."""

    def __init__(self, in_features: int, num_experts: int, k: int | None = None, z_loss: float = 0.0) -> None:
        super().__init__()
        # A dense mixture: whatever k the model asks for, every expert is kept.
        self.num_experts = self.k = num_experts
        self.z_loss = loss_weight("gating.z_loss", z_loss)
        self.linear = set_role(MaskedLinear(in_features, num_experts), "gate")

    def forward(self, x: Tensor) -> GateOutput:
        logits = self.linear(x)
        weights = torch.softmax(logits, dim=1)
        values, indices = torch.sort(weights, dim=1, descending=True)
        return GateOutput(weights, indices, values, z_loss_aux(logits, self.z_loss, self.training), None)

    def active_params(self) -> int:
        return self.linear.nonzero_params()

    def active_macs(self) -> int:
        return self.linear.nonzero_weights()
