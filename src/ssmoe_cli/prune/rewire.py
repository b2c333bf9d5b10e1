"""The drop/grow update of dynamic sparse training (SET, RigL) and the dense gradient RigL grows by.

- `drop`: remove n active weights of a layer by magnitude (all signs together, or per sign as SET).
- `grow`: activate n available inactive positions with the largest scores (those just dropped
  included, as RigL and SET do); new weights start at exactly 0.
- `install`: the one place a new connectivity is set: removed and new weights, their gradient and
  every weight-shaped optimizer state (Adam moments, momentum) are zeroed there.
- `dense_gradients`: the gradient of the training loss w.r.t. every weight, masked ones included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ssmoe_cli.models.base import ModelOutput
from ssmoe_cli.models.layers import Masked
from ssmoe_cli.prune.allocation import apportion
from ssmoe_cli.prune.masks import apply_masks

Batch = tuple[torch.Tensor, torch.Tensor]


# -- one update -------------------------------------------------------------------------------------
def _first(order: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Flat bool mask of the first n positions of `order` that are candidates."""
    picked = torch.zeros_like(candidates)
    ranked = order[candidates[order]]
    picked[ranked[:n]] = True
    return picked


def drop_by_magnitude(weight: torch.Tensor, active: torch.Tensor, n: int, signed: bool) -> torch.Tensor:
    """Flat bool mask of the n active weights to remove. Unsigned (RigL): the n smallest |w|. Signed
    (SET): active weights that are exactly 0 first, then the rest split between positive and negative
    weights in proportion to their counts, the ones closest to zero of each sign, which is SET's
    'fraction zeta of the smallest positive and of the largest negative weights' with an exact total."""
    w, active = weight.detach().flatten(), active.flatten()
    if not signed:
        return _first(torch.argsort(w.abs(), stable=True), active, n)
    zeros = active & (w == 0)
    dropped = _first(torch.arange(w.numel(), device=w.device), zeros, n)
    pos, neg = active & (w > 0), active & (w < 0)
    n_pos, n_neg = apportion(
        n - int(dropped.sum()), [float(pos.sum()), float(neg.sum())], [int(pos.sum()), int(neg.sum())]
    )
    dropped |= _first(torch.argsort(w, stable=True), pos, n_pos)
    dropped |= _first(torch.argsort(-w, stable=True), neg, n_neg)
    return dropped


def grow_by_score(scores: torch.Tensor, candidates: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Flat bool mask of the n candidates with the largest scores; equal scores in random order."""
    scores, candidates = scores.flatten(), candidates.flatten()
    perm = torch.randperm(scores.numel(), generator=generator).to(scores.device)
    order = perm[torch.argsort(scores[perm], descending=True, stable=True)]
    return _first(order, candidates, n)


@torch.no_grad()
def install(layer: Masked, mask: torch.Tensor, optimizers: Iterable[torch.optim.Optimizer] = ()) -> int:
    """Make `mask` the layer's connectivity: removed and new weights are 0, and so are their gradient
    and every weight-shaped optimizer state (a new weight starts from a blank Adam state, like a
    weight of a fresh model; a stale moment would move it before its own gradient does). Returns the
    number of newly active positions."""
    mask = mask.view_as(layer.mask).to(device=layer.mask.device, dtype=torch.bool)
    grown = int((mask & ~layer.mask).sum())
    # apply_masks zeroes weight, gradient and state wherever the kept set (mask AND old mask) is
    # False: the dropped positions and every inactive one, the new ones among them; then lift them.
    apply_masks({"layer": layer}, {"layer": mask}, optimizers)
    layer.mask.copy_(mask)
    return grown


def drop(layer: Masked, fraction: float, signed: bool, optimizers: Iterable[torch.optim.Optimizer] = ()) -> int:
    """Remove round(fraction x active) of the layer's active weights by magnitude (drop_by_magnitude);
    returns how many, the count `grow` must give back."""
    active = layer.mask.flatten()
    n = round(fraction * int(active.sum()))
    if n:
        install(layer, (active & ~drop_by_magnitude(layer.weight, active, n, signed)).view_as(layer.mask), optimizers)
    return n


def grow(
    layer: Masked,
    available: torch.Tensor,
    scores: torch.Tensor,
    n: int,
    generator: torch.Generator,
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> None:
    """Activate the n available inactive positions with the largest scores (those just dropped
    included, as RigL and SET do), at weight 0 with a blank optimizer state."""
    if n:
        candidates = available.flatten().to(layer.mask.device) & ~layer.mask.flatten()
        picked = grow_by_score(scores, candidates, n, generator)
        install(layer, (layer.mask.flatten() | picked).view_as(layer.mask), optimizers)


# -- the dense gradient -----------------------------------------------------------------------------
@contextlib.contextmanager
def _unmasked(layers: Iterable[Masked]) -> Iterator[None]:
    """Every mask all-True for the duration, then restored. Masked weights are exactly 0, so the
    forward pass is unchanged, and the gradient of weight is that of weight x mask: dense."""
    layers = list(layers)
    saved = [layer.mask.clone() for layer in layers]
    try:
        for layer in layers:
            layer.mask.fill_(True)
        yield
    finally:
        for layer, mask in zip(layers, saved, strict=True):
            layer.mask.copy_(mask)


def training_loss(output: ModelOutput | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss ClassifierModule trains: cross-entropy plus the model's auxiliary losses."""
    if not isinstance(output, ModelOutput):
        return F.cross_entropy(output, y)
    ce = F.cross_entropy(output.logits, y)
    return ce + sum(output.aux.values()) if output.aux else ce


def dense_gradients(model: nn.Module, layers: Mapping[str, Masked], batch: Batch) -> dict[str, torch.Tensor]:
    """d loss / d weight of each layer on one batch at every position, masked ones included (one
    extra forward and backward pass; the model's own .grad and the random state are left alone)."""
    weights = [layer.weight for layer in layers.values()]
    before = [w.requires_grad for w in weights]
    x, y = batch
    try:
        for w in weights:
            w.requires_grad_(True)  # a frozen layer (a pretrained gate) still gets its gradient
        devices = [x.device] if x.device.type == "cuda" else []
        # fork_rng: the pass draws the noise (noisy gating, dropout) that the training step on this batch
        # will draw again, so both see the same network; the run's random stream is left as it was.
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), _unmasked(layers.values()):
            loss = training_loss(model(x), y)
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
    finally:
        for w, flag in zip(weights, before, strict=True):
            w.requires_grad_(flag)
    dense = {
        name: (g if g is not None else torch.zeros_like(w)).detach()
        for name, g, w in zip(layers, grads, weights, strict=True)
    }
    return _mean_over_ranks(dense)


def _mean_over_ranks(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Under DDP every rank sees its own batch: average the gradients so that all ranks grow the
    same connections (their masks must stay identical)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for g in grads.values():
            dist.all_reduce(g)
            g /= dist.get_world_size()
    return grads
