"""Random pruning: the sanity baseline of pruning studies (Blalock et al. 2020, ShrinkBench). Same
schedule as magnitude and obd (train, prune, retrain, in rounds), but the weights removed at each
event are drawn uniformly at random among the survivors, so any method worth its cost must beat it
at the same budget. The draw is reproducible: round r uses seed + r.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ssmoe_cli.prune.callback import PruneContext, PruningCallback
from ssmoe_cli.prune.masks import check_scope, prune_to, target_layers
from ssmoe_cli.prune.schedule import Schedule


def random_prune(
    model: nn.Module,
    target_sparsity: float,
    targets: Sequence[str],
    generator: torch.Generator,
    scope: str = "layer",
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> float:
    """Prune uniformly drawn surviving weights of the targeted layers to exactly `target_sparsity`
    (per layer, or over all targeted weights with scope=global); returns the reached sparsity."""
    layers = target_layers(model, targets)
    scores = {name: torch.rand(layer.weight.shape, generator=generator) for name, layer in layers.items()}
    return prune_to(model, scores, target_sparsity, scope, optimizers)


class RandomPruning(PruningCallback):
    """Prunes random surviving weights at the schedule's events; training in between is the retraining.
    `schedule`: the Schedule's keys (prune.schedule, prune.rounds, ...: see Schedule.keys())."""

    def __init__(
        self, scope: str = "layer", seed: int = 0, targets: Sequence[str] | None = None, **schedule: Any
    ) -> None:
        super().__init__(targets=targets, schedule=Schedule.from_keys(**schedule))
        self.scope, self.seed = check_scope(scope), seed

    def prune(self, model: nn.Module, target: float, context: PruneContext) -> None:
        # One generator per round, seeded by the round: a resumed run draws what the first would have.
        generator = torch.Generator().manual_seed(self.seed + len(self.done) + 1)
        random_prune(model, target, self.targets, generator, self.scope, context.optimizers)
