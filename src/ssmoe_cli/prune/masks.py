"""Targets and masks, shared by every sparsity method: choosing the targeted layers (by role),
measuring sparsity, installing masks so that the final sparsity is exactly the target, and keeping
masked weights at zero through any optimizer.

Pruning only ever removes weights: a mask is installed as (new mask AND old mask), so weights that
are already masked (e.g. the padding of a mixture of experts' routes) stay masked and count as
pruned. With scope "layer" the count to prune is split over the layers in proportion to their size
(largest remainder, never fewer than a layer has already masked), so the total is exactly
round(target * N) of the N targeted weights; with scope "global" it is one ranking of all of them.

Budgets: `budget_sparsity` turns `prune.target_nonzero` (nonzero inference parameters of the whole
model, as params/nonzero counts them) into the exact sparsity of the targeted weights that reaches it.

Sparsity is measured over the weights of the targeted layers (biases excluded) and counts every
weight that is masked or exactly zero, like the accounting's params/nonzero does. Layers come from
the model's interface (`prunable_layers`), by qualified name; nothing here knows Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.models.accounting import inference_tensors
from ssmoe_cli.models.base import prunable_layers
from ssmoe_cli.models.layers import Masked, masked_layers

ROLES = ("hidden", "output", "route", "gate")
DEFAULT_TARGETS = ("hidden", "output", "route")
SCOPES = ("layer", "global")


# -- targets and sparsity ---------------------------------------------------------------------------
def check_scope(scope: str) -> str:
    """`layer` (each layer to the target) or `global` (one ranking over all targeted weights)."""
    if scope not in SCOPES:
        raise ValueError(f"prune.scope={scope!r}: choose layer or global")
    return scope


def check_targets(targets: Iterable[str] | str | None) -> list[str]:
    """The roles to prune as a list (a single role may be given as a string: prune.targets=gate)."""
    targets = [targets] if isinstance(targets, str) else list(DEFAULT_TARGETS if targets is None else targets)
    unknown = [t for t in targets if t not in ROLES]
    if unknown or not targets:
        raise ValueError(f"prune.targets={targets}: choose one or more of {', '.join(ROLES)}")
    return targets


def target_layers(model: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS) -> dict[str, Masked]:
    """The prunable layers whose role is in `targets`, by qualified name in the model (model order)."""
    roles = set(check_targets(targets))
    return {name: m for name, m in prunable_layers(model).items() if m.role in roles and m.weight.numel()}


def layers_sparsity(layers: Iterable[Masked]) -> float:
    """Fraction of masked or zero weights over the given layers (biases excluded); 0.0 if none."""
    total = nonzero = 0
    for layer in layers:
        total += layer.weight.numel()
        nonzero += layer.nonzero_weights()
    return (total - nonzero) / total if total else 0.0


def sparsity(model: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS) -> float:
    """Fraction of the targeted weights that are masked or zero (biases excluded); 0.0 if none."""
    return layers_sparsity(target_layers(model, targets).values())


def layer_table(model: nn.Module) -> list[dict[str, Any]]:
    """One row per prunable layer: name, role, shape, weights (dense count), nonzero, sparsity."""
    rows = []
    for name, m in prunable_layers(model).items():
        dense, nonzero = m.weight.numel(), m.nonzero_weights()
        rows.append(
            {
                "name": name,
                "role": m.role,
                "shape": tuple(m.weight.shape),
                "weights": dense,
                "nonzero": nonzero,
                "sparsity": (dense - nonzero) / dense if dense else 0.0,
            }
        )
    return rows


# -- budgets ----------------------------------------------------------------------------------------
def allocate(total: int, sizes: Sequence[int], floors: Sequence[int]) -> list[int]:
    """Split `total` into integer parts proportional to `sizes` that sum to exactly `total`, each part
    at least its floor and at most its size (largest remainder; ties go to the earlier part). A
    part whose proportional share is below its floor gets the floor and the rest is shared among
    the others. Totals outside [sum(floors), sum(sizes)] are clipped to that range."""
    total = min(max(total, sum(floors)), sum(sizes))
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(len(sizes)) if i not in fixed]
        rest, room = total - sum(fixed.values()), sum(sizes[i] for i in free)
        quota = {i: rest * sizes[i] / room if room else 0.0 for i in free}
        low = [i for i in free if floors[i] >= quota[i]]
        if not low:
            break
        fixed.update({i: floors[i] for i in low})
    parts = {i: math.floor(q) for i, q in quota.items()}
    by_remainder = sorted(quota, key=lambda i: (-(quota[i] - parts[i]), i))
    for i in by_remainder[: total - sum(fixed.values()) - sum(parts.values())]:
        parts[i] += 1
    parts.update(fixed)
    return [min(parts[i], sizes[i]) for i in range(len(sizes))]


def check_budget(target_nonzero: object) -> int | None:
    """prune.target_nonzero as given: null, or a whole number >= 1 (ValueError otherwise)."""
    if target_nonzero is not None and (
        isinstance(target_nonzero, bool) or not isinstance(target_nonzero, int) or target_nonzero < 1
    ):
        raise ValueError(f"prune.target_nonzero={target_nonzero!r} must be a whole number >= 1 (or null)")
    return target_nonzero


def fixed_nonzero(model: nn.Module, layers: Mapping[str, Masked]) -> int:
    """Nonzero inference parameters outside the weights of `layers` (biases, untargeted layers,
    float buffers): what a budget must leave room for. Untargeted masked weights count by their mask
    (a zero-initialised weight, such as SGMoE's W_g before training, will not stay zero)."""
    targeted = {id(layer.weight) for layer in layers.values()}
    owners = {id(m.weight): m for m in masked_layers(model)}
    count = 0
    for t in inference_tensors(model):
        if id(t) in targeted:
            continue
        owner = owners.get(id(t))
        count += int(owner.mask.sum()) if owner is not None else int(torch.count_nonzero(t))
    return count


def budget_sparsity(model: nn.Module, targets: Iterable[str], target_nonzero: int) -> float:
    """The sparsity of the targeted weights at which the model has exactly `target_nonzero` nonzero
    inference parameters (params/nonzero). One-line SsmoeError when no sparsity reaches it."""
    targets = check_targets(targets)
    layers = target_layers(model, targets)
    n = sum(layer.weight.numel() for layer in layers.values())
    fixed = fixed_nonzero(model, layers)
    keep = target_nonzero - fixed
    available = sum(int(layer.mask.sum()) for layer in layers.values())
    if keep < 0:
        raise SsmoeError(
            f"prune.target_nonzero={target_nonzero} is below the {fixed:,} nonzero parameters outside "
            f"prune.targets={targets} (biases, buffers, untargeted layers): add roles to prune.targets "
            "(e.g. gate) or raise prune.target_nonzero"
        )
    if keep > available:
        raise SsmoeError(
            f"prune.target_nonzero={target_nonzero} is above the {fixed + available:,} parameters this model "
            "can keep (pruning never adds weights): lower prune.target_nonzero, or use prune=none"
        )
    return 1.0 - keep / n if n else 0.0


# -- masks ------------------------------------------------------------------------------------------
@torch.no_grad()
def apply_masks(
    layers: Mapping[str, Masked], masks: Mapping[str, torch.Tensor], optimizers: Iterable[torch.optim.Optimizer] = ()
) -> None:
    """Install masks (ANDed with the current ones: pruning never regrows a weight) and zero, at the
    newly masked positions, the weight, its gradient and every weight-shaped optimizer state
    (Adam's exp_avg / exp_avg_sq, SGD's momentum_buffer...): a stale moment would otherwise keep
    moving a masked weight until the next re-zeroing and bias the survivors' statistics."""
    optimizers = list(optimizers)
    for name, mask in masks.items():
        layer = layers[name]
        mask = mask.to(device=layer.mask.device, dtype=torch.bool) & layer.mask
        layer.set_mask(mask)
        if layer.weight.grad is not None:
            layer.weight.grad.mul_(mask)
        for opt in optimizers:
            for value in opt.state.get(layer.weight, {}).values():
                if torch.is_tensor(value) and value.shape == mask.shape:
                    value.mul_(mask)


def register_mask_hook(optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
    """Re-zero every masked weight of `model` after each step of `optimizer`, whatever the optimizer
    does (weight decay, momentum, noise): masked weights then stay exactly zero."""
    layers = masked_layers(model)  # every mask, prunable or not (e.g. route padding)

    @torch.no_grad()
    def rezero(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for layer in layers:
            # An all-ones mask (nothing pruned yet, or prune=none) leaves the weight as it is: ~5% of
            # the dense FCL's step on CPU saved (the check is cached per mask version).
            if not layer.mask_is_full():
                layer.weight.mul_(layer.mask)

    return optimizer.register_step_post_hook(rezero)


def _prune_lowest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep-mask of a flat score vector with its n_prune lowest entries removed. A stable sort
    breaks ties by position (deterministic); -inf entries (already masked) are removed whatever
    n_prune says, since a mask is never lifted."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[torch.argsort(scores, stable=True)[:n_prune]] = False
    return keep & (scores != -math.inf)


def lowest_saliency_masks(
    layers: Mapping[str, Masked], saliency: Mapping[str, torch.Tensor], target_sparsity: float, scope: str = "layer"
) -> dict[str, torch.Tensor]:
    """Keep-masks pruning exactly round(target * N) of the N weights of the layers together, the
    lowest-saliency ones: each layer its share in proportion to its size (scope "layer", `allocate`;
    within one weight of target * n for a layer of n weights), or one ranking of all (scope "global").
    Masked weights rank lowest, so they are part of the count."""
    check_scope(scope)
    scores = {
        name: torch.where(layers[name].mask, s.detach().float(), -math.inf).flatten() for name, s in saliency.items()
    }
    total = round(target_sparsity * sum(s.numel() for s in scores.values()))
    if scope == "layer":
        sizes = [s.numel() for s in scores.values()]
        floors = [int((s == -math.inf).sum()) for s in scores.values()]
        counts = allocate(total, sizes, floors)
        return {
            name: _prune_lowest(s, count).view_as(layers[name].mask)
            for (name, s), count in zip(scores.items(), counts, strict=True)
        }
    flat = torch.cat(list(scores.values()))
    keep = _prune_lowest(flat, total)
    pieces = keep.split([s.numel() for s in scores.values()])
    return {name: piece.view_as(layers[name].mask) for name, piece in zip(scores, pieces, strict=True)}


def prune_to(
    model: nn.Module,
    saliency_by_layer: Mapping[str, torch.Tensor],
    target_sparsity: float,
    scope: str = "layer",
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> float:
    """Mask the lowest-saliency weights of the named layers (names as in target_layers) so that
    exactly round(target * N) of their N weights are pruned (see lowest_saliency_masks); returns
    the reached sparsity of those layers: the target, unless the layers already had more masked
    weights than that, or unmasked weights that are exactly zero (they count as pruned; the weights
    are never 0 after training in practice, but e.g. a zero-initialised gate is)."""
    prunable = prunable_layers(model)
    layers = {name: prunable[name] for name in saliency_by_layer}
    apply_masks(layers, lowest_saliency_masks(layers, saliency_by_layer, target_sparsity, scope), optimizers)
    return layers_sparsity(layers.values())
