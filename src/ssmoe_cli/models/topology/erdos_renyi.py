"""Random links (Erdos-Renyi): each ordered pair of experts is linked with probability `link_prob`.

In-degrees vary; shorter link lists are padded (and the padding masked), so the drawn graph fixes
the parameter shapes once, independently of the gate's map.
"""

from __future__ import annotations

import torch

from ssmoe_cli.models.topology.base import Topology


class ErdosRenyi(Topology):
    def __init__(self, link_prob: float = 0.125, fan_out: int = 4) -> None:
        super().__init__(fan_out=fan_out)
        if not 0.0 <= link_prob <= 1.0:
            raise ValueError(f"topology.link_prob must be in [0, 1], got {link_prob}")
        self.link_prob = link_prob

    def in_links(self, num_experts: int, positions: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        adj = torch.rand(num_experts, num_experts, generator=generator) < self.link_prob  # adj[b, a]: a -> b
        adj.fill_diagonal_(False)
        width = int(adj.sum(1).max()) if num_experts else 0
        sources = torch.full((num_experts, width), -1, dtype=torch.long)
        for b in range(num_experts):
            src = torch.nonzero(adj[b]).flatten()
            sources[b, : len(src)] = src
        return sources
