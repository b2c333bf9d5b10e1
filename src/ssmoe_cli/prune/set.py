"""SET, Sparse Evolutionary Training (Mocanu et al. 2018): the network is an Erdos-Renyi random graph
from the first step (density per layer from eps (n_in + n_out) / (n_in n_out), or ERK, or uniform:
prune.allocation); after each epoch (prune.every, prune.unit) every targeted layer removes the
fraction zeta of its smallest positive and of its largest negative weights (those closest to zero)
and grows as many new connections at random among the positions it lacks. New weights start at 0.

The random growth prefers positions where the update's batch gives a nonzero gradient: a connection
no gradient reaches (an input pixel that is 0 in every image, a dead unit) could never move off 0,
so it would hold a place of the budget without ever counting as a nonzero parameter (Mocanu et al.
regrow with random values, where this cannot happen; here new weights start at 0). Among those
positions, and among the rest when they are too few, the draw is uniform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ssmoe_cli.models.layers import Masked
from ssmoe_cli.prune.dynamic import DynamicSparsity
from ssmoe_cli.prune.rewire import Batch, dense_gradients


class SparseEvolutionaryTraining(DynamicSparsity):
    """SET: remove the fraction `zeta` by magnitude (per sign), regrow as many at random."""

    signed = True

    def __init__(
        self,
        density: float = 0.05,  # as conf/prune/set.yaml: SET's Fashion-MNIST networks keep ~4.5-4.9%
        target_nonzero: int | None = None,
        allocation: str = "erdos_renyi",
        zeta: float = 0.3,
        every: int = 1,
        unit: str = "epoch",
        stop: float = 1.0,
        seed: int = 0,
        targets: Sequence[str] | None = None,
    ) -> None:
        super().__init__(density, target_nonzero, allocation, every, unit, stop, seed, targets)
        if not 0.0 <= zeta < 1.0:
            raise ValueError(f"prune.zeta={zeta} must be in [0, 1) (the fraction replaced at each update)")
        self.zeta = zeta

    def fraction(self, now: int) -> float:
        return self.zeta

    def grow_scores(self, model: nn.Module, layers: Mapping[str, Masked], batch: Batch) -> dict[str, torch.Tensor]:
        # 1 where the batch's gradient reaches the position, 0 elsewhere; ties are drawn at random.
        return {name: (g != 0).float() for name, g in dense_gradients(model, layers, batch).items()}
