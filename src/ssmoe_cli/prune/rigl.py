"""RigL, the Rigged Lottery (Evci et al. 2020): sparse from the first step (ERK, Erdos-Renyi or uniform
allocation: prune.allocation); every `delta` optimizer steps until `stop` x the training's steps,
every targeted layer drops the fraction alpha_t of its active weights with the smallest |w| and
grows as many where the gradient of the loss is largest in magnitude among the positions it lacks
(those just dropped included). alpha_t = alpha / 2 (1 + cos(pi t / T_end)), T_end = stop x the
training's steps: a cosine decay from alpha to 0. New weights start at 0.

The gradient at a missing connection: the forward pass multiplies weight by mask, so the weight's
own gradient is 0 where the mask is; RigL needs d loss / d (weight x mask), which is dense. Masked
weights are exactly 0 here, so one extra forward and backward pass on the update's batch with
every mask set to 1 leaves the output unchanged and gives exactly that gradient
(rewire.dense_gradients); its cost is one training step per update (every 100 steps by default),
and the model's accumulated gradients are not touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ssmoe_cli.models.layers import Masked
from ssmoe_cli.prune.dynamic import DynamicSparsity
from ssmoe_cli.prune.rewire import Batch, dense_gradients


def cosine_fraction(alpha: float, t: int, t_end: float) -> float:
    """RigL's drop fraction at step t: alpha / 2 (1 + cos(pi t / T_end)); 0 from T_end on."""
    if t >= t_end:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * t / t_end))


class RigL(DynamicSparsity):
    """RigL: drop the smallest |w|, grow where |dense gradient| is largest, cosine-decayed fraction."""

    every_key = "delta"

    def __init__(
        self,
        density: float = 0.05,
        target_nonzero: int | None = None,
        allocation: str = "erk",
        alpha: float = 0.3,
        delta: int = 100,
        stop: float = 0.75,
        seed: int = 0,
        targets: Sequence[str] | None = None,
    ) -> None:
        super().__init__(density, target_nonzero, allocation, delta, "step", stop, seed, targets)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"prune.alpha={alpha} must be in [0, 1) (the initial drop fraction)")
        self.alpha, self.delta = alpha, delta

    def fraction(self, now: int) -> float:
        return cosine_fraction(self.alpha, now, self.stop * self._horizon)

    def grow_scores(self, model: nn.Module, layers: Mapping[str, Masked], batch: Batch) -> dict[str, torch.Tensor]:
        return {name: g.abs() for name, g in dense_gradients(model, layers, batch).items()}
