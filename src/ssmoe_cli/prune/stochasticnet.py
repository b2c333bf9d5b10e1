"""StochasticNet (Shafiee et al. 2015): the network is one realisation of a random graph, drawn
once before training and never changed; training then only fits the weights of the connections
that exist.

Each targeted layer keeps exactly round(density * n) of its n weights (already-masked weights, e.g.
route padding, are never revived and count as absent), drawn without replacement with random keys
instead of independent Bernoulli draws, so the density is exact and reproducible from the seed.
scope=global draws the kept count over all targeted weights at once (a layer keeps a random share).
With `target_nonzero` (a budget of nonzero inference parameters for the whole model) the density is
the one that reaches it, and the kept count is split over the layers in proportion to their size so
that the model ends with exactly that many nonzero parameters (masks.budget_sparsity, allocate).

mode=distance: in a mixture of experts the route weights (expert e's second layer reading a unit
of source expert s) are drawn with weight w = exp(-d(e, s) / (distance_scale * mean distance)),
d the distance between the two experts' places in the gate's 2-D map (experts on a ring when the
gate has no map). Gumbel top-k keys (log w + Gumbel noise; Efraimidis & Spirakis 2006) draw the
exact count with inclusion probabilities that fall with the distance, so the expected density is
still `density` and close expert pairs keep more connections. Other layers are drawn uniformly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.models.base import Routing, routing_of
from ssmoe_cli.prune.callback import PruneContext, PruningCallback
from ssmoe_cli.prune.masks import (
    DEFAULT_TARGETS,
    allocate,
    apply_masks,
    budget_sparsity,
    check_budget,
    check_scope,
    target_layers,
)

MODES = ("uniform", "distance")


def route_log_weights(routing: Routing, distance_scale: float) -> torch.Tensor:
    """(E, 1, R) log keep-weights of the route weights (E, out, R): -d(e, source) / length."""
    pos = routing.positions()
    source = routing.route_columns.cpu()  # (E, R): the expert each route column reads
    dist = (pos.unsqueeze(1) - pos[source]).norm(dim=-1)  # (E, R)
    pairs = torch.pdist(pos)
    length = distance_scale * (float(pairs.mean()) if pairs.numel() else 1.0)
    return (-dist / max(length, 1e-12)).unsqueeze(1)


def draw_keys(
    available: torch.Tensor, generator: torch.Generator, log_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Flat random keys of a layer's weights, -inf where not available (Gumbel(0, 1), plus
    log_weight when given: the top n keys are then a draw of n without replacement with
    probabilities following exp(log_weight), the Gumbel top-k trick)."""
    keys = -torch.log(-torch.log(torch.rand(available.shape, generator=generator)))
    if log_weight is not None:
        keys = keys + log_weight
    return torch.where(available.cpu(), keys, -math.inf).flatten()


def _top(keys: torch.Tensor, n_keep: int) -> torch.Tensor:
    keep = torch.zeros_like(keys, dtype=torch.bool)
    keep[torch.argsort(keys, descending=True, stable=True)[: min(n_keep, int((keys > -math.inf).sum()))]] = True
    return keep


def draw_keep(
    available: torch.Tensor, n_keep: int, generator: torch.Generator, log_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep-mask with min(n_keep, available) entries of `available`, drawn without replacement
    (with probabilities following exp(log_weight) when given: Gumbel top-k)."""
    return _top(draw_keys(available, generator, log_weight), n_keep).view(available.shape)


def random_masks(
    model: nn.Module,
    density: float,
    targets: Sequence[str] = DEFAULT_TARGETS,
    mode: str = "uniform",
    seed: int = 0,
    distance_scale: float = 0.5,
    target_nonzero: int | None = None,
    scope: str = "layer",
) -> dict[str, torch.Tensor]:
    """One random-graph realisation: a keep-mask per targeted layer with round(density * n) ones
    (scope "layer"), or round(density * N) over all N targeted weights in one draw (scope "global");
    with `target_nonzero`, the count that gives the model exactly that many nonzero parameters."""
    if mode not in MODES:
        raise ValueError(f"prune.mode={mode!r}: choose uniform or distance")
    check_scope(scope)
    layers = target_layers(model, targets)
    routing = routing_of(model)
    route = routing.route if routing is not None else None
    if mode == "distance" and (route is None or not any(layer is route for layer in layers.values())):
        raise SsmoeError(
            "prune.mode=distance draws inter-expert routes by distance, but this model has none among "
            f"prune.targets={list(targets)}: use a mixture of experts with a topology other than isolated "
            "and 'route' in prune.targets, or prune.mode=uniform"
        )
    generator = torch.Generator().manual_seed(seed)
    keys = {}
    for name, layer in layers.items():
        distance = mode == "distance" and routing is not None and layer is route
        log_weight = route_log_weights(routing, distance_scale) if distance else None
        keys[name] = draw_keys(layer.mask, generator, log_weight)
    sizes = [layer.weight.numel() for layer in layers.values()]
    if target_nonzero is None:
        keeps = [round(density * n) for n in sizes]
    else:  # exact in total: prune counts allocated like scope=layer pruning, never reviving a masked weight
        pruned = round(budget_sparsity(model, targets, target_nonzero) * sum(sizes))
        floors = [int((~layer.mask).sum()) for layer in layers.values()]
        keeps = [n - p for n, p in zip(sizes, allocate(pruned, sizes, floors), strict=True)]
    if scope == "global":
        total = sum(keeps) if target_nonzero is not None else round(density * sum(sizes))
        kept = _top(torch.cat(list(keys.values())), total).split(sizes)
        return {name: k.view(layers[name].mask.shape) for name, k in zip(layers, kept, strict=True)}
    return {
        name: _top(keys[name], n_keep).view(layers[name].mask.shape) for name, n_keep in zip(layers, keeps, strict=True)
    }


class StochasticNet(PruningCallback):
    """Fixes a random sparse connectivity in on_fit_start, before the first training step."""

    def __init__(
        self,
        density: float = 0.1,  # as conf/prune/stochasticnet.yaml: 90% sparse, like magnitude and obd
        mode: str = "uniform",
        distance_scale: float = 0.5,
        seed: int = 0,
        targets: Sequence[str] | None = None,
        target_nonzero: int | None = None,
        scope: str = "layer",
    ) -> None:
        super().__init__(targets=targets)
        self.scope = check_scope(scope)
        if not 0.0 < density <= 1.0:
            raise ValueError(f"prune.density={density} must be in (0, 1]")
        if mode not in MODES:
            raise ValueError(f"prune.mode={mode!r}: choose uniform or distance")
        if distance_scale <= 0:
            raise ValueError(f"prune.distance_scale={distance_scale} must be > 0")
        self.density, self.mode, self.distance_scale, self.seed = density, mode, distance_scale, seed
        self.target_nonzero = check_budget(target_nonzero)

    def start(self, model: nn.Module, context: PruneContext) -> None:
        self.draw(model, context.optimizers)

    def draw(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer] = ()) -> float:
        """Install the seed's realisation; returns the reached sparsity over the targets. Drawing
        again gives the same graph (same keys, and the kept set is the top of its own keys)."""
        masks = random_masks(
            model,
            self.density,
            self.targets,
            self.mode,
            self.seed,
            self.distance_scale,
            target_nonzero=self.target_nonzero,
            scope=self.scope,
        )
        apply_masks(target_layers(model, self.targets), masks, optimizers)
        return self.final_sparsity(model)
