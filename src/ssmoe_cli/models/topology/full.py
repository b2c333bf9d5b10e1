"""Every expert reads from every other expert (an ablation: the dense end of the spectrum)."""

from __future__ import annotations

import torch

from ssmoe_cli.models.topology.base import Topology


class Full(Topology):
    def __init__(self, fan_out: int = 4) -> None:
        super().__init__(fan_out=fan_out)

    def in_links(self, num_experts: int, positions: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        others = ~torch.eye(num_experts, dtype=torch.bool)
        return torch.arange(num_experts).expand(num_experts, -1)[others].reshape(num_experts, num_experts - 1)
