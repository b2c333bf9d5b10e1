"""Allocation of a sparse network's connections over its layers, for the methods that train sparse
from the start (SET, RigL): how many weights each targeted layer keeps, and a random first draw.

`erdos_renyi` (Mocanu et al. 2018): the density of a layer is proportional to (n_in + n_out) /
(n_in n_out), i.e. eps (n_in + n_out) connections per weight matrix. `erk` (Evci et al. 2020):
the same with a convolution kernel's spatial size in numerator and denominator; every layer here is
linear, so ERK and ER are the same allocation (both names are accepted, as the papers use them).
`uniform`: the same density in every layer. The scale eps is solved so that the total is exact; a
layer whose share exceeds the positions it has is made dense (capped) and eps recomputed over the
others, as RigL's sparse_utils does. Positions masked by construction (route padding) are never
counted as available.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ssmoe_cli.models.layers import Masked
from ssmoe_cli.prune.masks import budget_sparsity, fixed_nonzero
from ssmoe_cli.prune.stochasticnet import draw_keep

ALLOCATIONS = ("erdos_renyi", "erk", "uniform")


def check_allocation(allocation: str) -> str:
    """`allocation` if it is one of ALLOCATIONS (ValueError otherwise)."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"prune.allocation={allocation!r}: choose erdos_renyi, erk or uniform")
    return allocation


def er_score(layer: Masked) -> float:
    """(n_in + n_out) / (n_in n_out) of one weight matrix (an ExpertLinear is E matrices of that shape)."""
    n_out, n_in = layer.weight.shape[-2:]
    return (n_in + n_out) / (n_in * n_out)


def apportion(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """Integers proportional to `weights` that sum to exactly min(total, sum(caps)), part i at most
    caps[i]: parts whose share exceeds their cap get the cap and the rest is shared again among the
    others (the scale grows, so every part over its cap at one pass stays over at the next; they are
    capped together). Remainders go to the largest fractional parts (ties to the earlier part)."""
    total = min(max(total, 0), sum(caps))
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(len(weights)) if i not in fixed]
        rest, mass = total - sum(fixed.values()), sum(weights[i] for i in free)
        quota = {i: rest * weights[i] / mass if mass else 0.0 for i in free}
        over = [i for i in free if quota[i] > caps[i]]
        if not over:
            break
        fixed.update({i: caps[i] for i in over})
    parts = {i: math.floor(q) for i, q in quota.items()}
    for i in sorted(quota, key=lambda i: (-(quota[i] - parts[i]), i))[: rest - sum(parts.values())]:
        parts[i] += 1
    parts.update(fixed)
    return [parts[i] for i in range(len(weights))]


def keep_counts(
    model: nn.Module,
    layers: Mapping[str, Masked],
    available: Mapping[str, torch.Tensor],
    allocation: str,
    density: float,
    targets: Sequence[str],
    target_nonzero: int | None = None,
) -> list[int]:
    """Active weights per layer: round(density x N) of the N targeted weights in total, or the count
    that gives the whole model exactly `target_nonzero` nonzero parameters (one-line SsmoeError when
    no count does), split by `allocation` and never above a layer's available positions."""
    sizes = [layer.weight.numel() for layer in layers.values()]
    caps = [int(available[name].sum()) for name in layers]
    if target_nonzero is None:
        total = round(density * sum(sizes))
    else:
        budget_sparsity(model, targets, target_nonzero)  # the budget's range check and its error line
        total = target_nonzero - fixed_nonzero(model, layers)
    if check_allocation(allocation) == "uniform":
        weights = [float(n) for n in sizes]
    else:  # erdos_renyi and erk: eps (n_in + n_out) per matrix = eps x score x size
        weights = [er_score(layer) * n for layer, n in zip(layers.values(), sizes, strict=True)]
    return apportion(total, weights, caps)


def initial_masks(
    layers: Mapping[str, Masked], available: Mapping[str, torch.Tensor], counts: Sequence[int], seed: int
) -> dict[str, torch.Tensor]:
    """A uniformly random keep-mask per layer with exactly its count of available positions."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: draw_keep(available[name], n, generator).to(layers[name].mask.device)
        for name, n in zip(layers, counts, strict=True)
    }
