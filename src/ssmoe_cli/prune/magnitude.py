"""Magnitude pruning (Han et al. 2015, "Learning both Weights and Connections"): train, remove the
smallest weights, retrain the survivors, repeat; and the gradual cubic schedule of Zhu & Gupta
(2017) on the same criterion.

Two criteria:
- fraction: remove the weights of lowest |w| so that the round's target sparsity is reached
  exactly (per layer, or over all targeted weights at once with scope=global);
- std (Han et al.'s own): remove |w| < quality_factor x std of the layer's surviving weights
  (population std; scope=global: the std of all targeted surviving weights). The reached sparsity
  follows from the weights, not from target_sparsity: it is logged and reported per round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ssmoe_cli.models.layers import Masked
from ssmoe_cli.prune.callback import PruneContext, PruningCallback
from ssmoe_cli.prune.masks import DEFAULT_TARGETS, apply_masks, check_scope, layers_sparsity, prune_to, target_layers
from ssmoe_cli.prune.schedule import Schedule

CRITERIA = ("fraction", "std")


def magnitude_prune(
    model: nn.Module,
    target_sparsity: float,
    targets: Sequence[str] = DEFAULT_TARGETS,
    scope: str = "layer",
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> float:
    """Prune the smallest |w| of the targeted layers to exactly `target_sparsity`; returns it."""
    layers = target_layers(model, targets)
    saliency = {name: layer.masked_weight().detach().abs() for name, layer in layers.items()}
    return prune_to(model, saliency, target_sparsity, scope, optimizers)


@torch.no_grad()
def std_masks(layers: Mapping[str, Masked], quality_factor: float, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Keep-masks of |w| >= quality_factor x std(surviving weights), per layer or global."""
    check_scope(scope)
    survivors = {name: layer.weight[layer.mask] for name, layer in layers.items()}

    def threshold(w: torch.Tensor) -> float:
        return quality_factor * float(w.std(correction=0)) if w.numel() else 0.0

    if scope == "global":
        shared = threshold(torch.cat(list(survivors.values())))
        thresholds = dict.fromkeys(layers, shared)
    else:
        thresholds = {name: threshold(w) for name, w in survivors.items()}
    return {name: layer.mask & (layer.weight.abs() >= thresholds[name]) for name, layer in layers.items()}


def std_prune(
    model: nn.Module,
    quality_factor: float,
    targets: Sequence[str] = DEFAULT_TARGETS,
    scope: str = "layer",
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> float:
    """Han et al.'s threshold rule on the targeted layers; returns the reached sparsity."""
    layers = target_layers(model, targets)
    apply_masks(layers, std_masks(layers, quality_factor, scope), optimizers)
    return layers_sparsity(layers.values())


class MagnitudePruning(PruningCallback):
    """Prunes the smallest weights at the schedule's events; training in between is the retraining.
    `schedule`: the Schedule's keys (prune.schedule, prune.rounds, ...: see Schedule.keys())."""

    def __init__(
        self,
        scope: str = "layer",
        criterion: str = "fraction",
        quality_factor: float = 1.0,
        targets: Sequence[str] | None = None,
        **schedule: Any,
    ) -> None:
        super().__init__(targets=targets, schedule=Schedule.from_keys(**schedule))
        check_scope(scope)
        if criterion not in CRITERIA:
            raise ValueError(f"prune.criterion={criterion!r}: choose fraction or std")
        if criterion == "std" and self.schedule.target_nonzero is not None:
            raise ValueError(
                "prune.criterion=std sets its own sparsity: prune.target_nonzero needs prune.criterion=fraction"
            )
        if criterion == "std" and self.schedule.kind == "gradual":
            raise ValueError("prune.criterion=std sets no sparsity to follow: use prune.schedule=oneshot or iterative")
        if quality_factor <= 0:
            raise ValueError(f"prune.quality_factor={quality_factor} must be > 0")
        self.scope, self.criterion, self.quality_factor = scope, criterion, quality_factor

    def prune(self, model: nn.Module, target: float, context: PruneContext) -> None:
        if self.criterion == "fraction":
            magnitude_prune(model, target, self.targets, self.scope, context.optimizers)
        else:
            std_prune(model, self.quality_factor, self.targets, self.scope, context.optimizers)
