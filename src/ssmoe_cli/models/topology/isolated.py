"""Isolated experts: the classic mixture of experts, no routes between them."""

from __future__ import annotations

import torch

from ssmoe_cli.models.topology.base import Topology


class Isolated(Topology):
    def __init__(self) -> None:
        super().__init__(fan_out=0)

    def in_links(self, num_experts: int, positions: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return torch.empty(num_experts, 0, dtype=torch.long)
