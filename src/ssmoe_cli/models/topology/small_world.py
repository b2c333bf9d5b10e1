"""Small world (Watts & Strogatz 1998) over the experts' placement in the gate's 2-D map.

Each expert reads from its `degree` nearest experts in the map (dense local clusters); each such
link is rewired with probability `rewire_p` to a uniformly drawn expert that is not already a
neighbour (sparse long-range links). In-degree is exactly `degree` for every expert, so parameter
shapes do not depend on the draw. Without a map (e.g. noisy_topk gates) experts sit on a ring, which
is Watts-Strogatz's original lattice.
"""

from __future__ import annotations

import torch

from ssmoe_cli.models.topology.base import Topology, ring_positions


class SmallWorld(Topology):
    uses_positions = True

    def __init__(self, degree: int = 2, rewire_p: float = 0.1, fan_out: int = 4) -> None:
        super().__init__(fan_out=fan_out)
        if degree < 0:
            raise ValueError(f"topology.degree must be >= 0, got {degree}")
        if not 0.0 <= rewire_p <= 1.0:
            raise ValueError(f"topology.rewire_p must be in [0, 1], got {rewire_p}")
        self.degree, self.rewire_p = degree, rewire_p

    def in_links(self, num_experts: int, positions: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if self.degree >= num_experts:
            raise ValueError(f"topology.degree={self.degree} must be < num_experts={num_experts}")
        pos = ring_positions(num_experts) if positions is None else positions.detach().float().cpu()
        dist = torch.cdist(pos, pos)
        dist.fill_diagonal_(float("inf"))
        # Stable ordering: ties (e.g. a regular ring) are broken by expert index, not by chance.
        order = torch.sort(dist, dim=1, stable=True).indices
        nearest = order[:, : self.degree]
        sources = nearest.clone()
        rewire = torch.rand(num_experts, self.degree, generator=generator) < self.rewire_p
        for b in range(num_experts):
            for s in torch.nonzero(rewire[b]).flatten().tolist():
                # A rewired link goes to a distant expert: never a map neighbour, never a duplicate.
                taken = set(nearest[b].tolist()) | set(sources[b].tolist()) | {b}
                candidates = [a for a in range(num_experts) if a not in taken]
                if candidates:  # with degree = E - 1 there is nothing left to rewire to
                    pick = int(torch.randint(len(candidates), (1,), generator=generator))
                    sources[b, s] = candidates[pick]
        return sources
