"""Topology base: in-links per expert, and the unit-level routes they carry.

An in-link (a -> b) lets expert b read `fan_out` hidden units of expert a's first hidden layer,
chosen at random once. Expert b's second layer then sees its own first-layer units plus those
route units. So a sample routed to b computes b plus only the few route units b reads: the active
subnetwork grows with k and the fan-out, never with the number of experts.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Routes:
    """For each expert b: the flat indices (a * hidden + j) of the source units it reads.

    units: (E, R) long, valid: (E, R) bool (False marks padding where an expert has fewer in-links).
    sources: (E, D) long in-link source experts, -1 = none.
    """

    sources: torch.Tensor
    units: torch.Tensor
    valid: torch.Tensor

    @property
    def width(self) -> int:
        return self.units.shape[1]


class Topology(abc.ABC):
    """Base class. Subclasses implement `in_links`; `uses_positions` says whether the map matters."""

    uses_positions = False

    def __init__(self, fan_out: int = 0) -> None:
        if fan_out < 0:
            raise ValueError(f"topology.fan_out must be >= 0, got {fan_out}")
        self.fan_out = fan_out

    @abc.abstractmethod
    def in_links(self, num_experts: int, positions: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """(E, D) long: the source experts each expert reads, -1 padded. No self-links, no duplicates."""

    def routes(
        self, num_experts: int, hidden: int, positions: torch.Tensor | None, generator: torch.Generator
    ) -> Routes:
        """In-links and, for each, `fan_out` distinct hidden units of the source drawn at random."""
        if self.fan_out > hidden:
            raise ValueError(f"topology.fan_out={self.fan_out} exceeds the experts' first hidden size {hidden}")
        sources = self.in_links(num_experts, positions, generator)
        e, d = sources.shape
        if d == 0 or self.fan_out == 0:
            empty = torch.zeros(e, 0, dtype=torch.long)
            return Routes(sources[:, :0], empty, empty.bool())
        # fan_out distinct units of the source, per link: argsort of random keys.
        picks = torch.rand(e, d, hidden, generator=generator).argsort(dim=-1)[..., : self.fan_out]
        units = sources.clamp(min=0).unsqueeze(-1) * hidden + picks  # (E, D, fan_out)
        valid = (sources >= 0).unsqueeze(-1).expand_as(units)
        return Routes(sources, units.reshape(e, -1), valid.reshape(e, -1).clone())


def ring_positions(num_experts: int) -> torch.Tensor:
    """Experts on a circle: the placement used when a gate has no 2-D map (Watts-Strogatz's ring)."""
    angle = torch.arange(num_experts, dtype=torch.float32) * (2 * torch.pi / num_experts)
    return torch.stack([angle.cos(), angle.sin()], dim=1)
