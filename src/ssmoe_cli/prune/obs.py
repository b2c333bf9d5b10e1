"""Optimal Brain Surgeon (Hassibi & Stork 1993) with its weight correction, made practical layer by
layer as in OBC (Frantar & Alistarh 2022) and SparseGPT (Frantar & Alistarh 2023): train, prune to
the round's target, retrain, repeat.

For each targeted layer y = W x, the inputs x_i of N training samples (`batches` batches, eval mode)
give the layer-wise loss of new weights W', E(W') = (1/N) sum_i ||(W' - W) x_i||^2, whose Hessian per
output row is H = (2/N) sum_i x_i x_i^T, damped to H + damp * mean(diag H) * I. Its OBS saliency,
w_q^2 / (2 [H^-1]_qq), is then exactly the increase of E when weight q of a row is removed and the
row's other survivors are corrected (no other scaling: E is a mean over samples of squared output
errors, in the units of the layer's outputs). The algebra is in surgeon.py: each row's greedy OBS
order (H^-1 updated after every removal; on rows wider than 127, after every width/64 removals
taken in exact OBS order among themselves), the layer's count split over its rows by the lowest
step losses, the corrected weights in closed form.

Per expert: an ExpertLinear layer (E, out, in) has one H per expert, from the rows that expert
actually computes, i.e. the samples routed to it (the hooks read the gate's selection of the same
pass; the model runs in its `vmappable` form, a mixture's dense dispatch, so a layer's input rows
are the batch's samples). The route layer's inputs are the route units an expert reads. A
first-layer unit that other experts also read through a route gets its own expert's H: its extra
readers' samples are left out (the model does not expose per-unit readers; the units are few).

How many weights each layer loses: scope=layer, its share of the target (`allocate`, exact);
scope=global, the layers' shares of the lowest OBS saliencies w_q^2 / (2 [H^-1]_qq) over all targeted
weights, each computed before any removal of this round. That is an approximation: the saliency of a
weight changes as its row's other weights are removed and corrected, and the layer-wise losses of
different layers are in the units of different outputs. Inside a layer, the greedy sequences decide.
All layers' inputs come from one pass over the network as it was before the round (OBC/SparseGPT
prune layer after layer on the already-pruned predecessors; retraining follows here instead).
Biases are neither pruned nor corrected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssmoe_cli.models.base import routing_of, vmappable
from ssmoe_cli.models.layers import ExpertLinear, Masked
from ssmoe_cli.prune.callback import Batch, PruneContext, PruningCallback
from ssmoe_cli.prune.masks import (
    DEFAULT_TARGETS,
    apply_masks,
    check_scope,
    layers_sparsity,
    lowest_saliency_masks,
    target_layers,
)
from ssmoe_cli.prune.schedule import Schedule
from ssmoe_cli.prune.surgeon import dampen, keep_after, row_counts, surgeon_order, surgeon_weights

log = logging.getLogger(__name__)


def _groups(layer: Masked) -> tuple[int, Tensor]:
    """(G, group of each row of the layer's weight as (rows, in)): experts for an ExpertLinear."""
    w = layer.weight
    if w.dim() == 3:
        experts, out = w.shape[0], w.shape[1]
        return experts, torch.arange(experts, device=w.device).repeat_interleave(out)
    return 1, torch.zeros(w.shape[0], dtype=torch.long, device=w.device)


@torch.no_grad()
def collect_hessians(model: nn.Module, layers: Mapping[str, Masked], batches: Iterable[Batch]) -> dict[str, Tensor]:
    """(G, in, in) float64 per layer: (2/N) sum x x^T over the inputs x of the N samples of `batches`,
    one matrix per expert for an ExpertLinear (its routed rows only), one for a plain layer."""
    sums = {}
    for name, m in layers.items():
        d = m.weight.shape[-1]
        sums[name] = torch.zeros(_groups(m)[0], d, d, dtype=torch.float64, device=m.weight.device)
    routing = routing_of(model)
    routed: list[Tensor | None] = [None]  # (B, E) experts each sample of the current pass uses

    def on_gate(module: nn.Module, args: Any, output: Any) -> None:
        routed[0] = output.weights > 0

    def on_layer(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
            x = args[0].detach().to(torch.float64)
            acc = sums[name]
            if not isinstance(module, ExpertLinear):
                x = x.reshape(-1, x.shape[-1])
                acc[0] += x.T @ x
                return
            experts = args[1] if len(args) > 1 else kwargs.get("experts")
            if experts is not None:  # block m of x is computed by expert experts[m]: all its rows are real
                for e in experts.unique():
                    xe = x[experts == e].reshape(-1, x.shape[-1])
                    acc[e] += xe.T @ xe
                return
            active = routed[0]
            if active is not None:  # x (E, B, in): every expert on every sample; keep the routed rows
                if active.shape != (x.shape[1], x.shape[0]):
                    raise RuntimeError(
                        f"prune=obs: {name} ran on {x.shape[1]} rows per expert, not the batch's {active.shape[0]} "
                        "samples; the model's vmappable() form must run every expert on the whole batch"
                    )
                x = x * active.T.unsqueeze(2)
            acc += x.transpose(1, 2) @ x

        return hook

    handles = [m.register_forward_hook(on_layer(name), with_kwargs=True) for name, m in layers.items()]
    if routing is not None:
        handles.append(routing.gate.register_forward_hook(on_gate))
    was_training, count = model.training, 0
    model.eval()  # the inputs of inference: no dropout, no gate noise
    try:
        with vmappable(model):
            for x, _ in batches:
                routed[0] = None
                model(x)
                count += len(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: s * (2.0 / max(count, 1)) for name, s in sums.items()}


def obs_prune(
    model: nn.Module,
    batches: Iterable[Batch],
    target_sparsity: float,
    targets: Sequence[str] = DEFAULT_TARGETS,
    scope: str = "layer",
    damp: float = 0.01,
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> float:
    """One OBS round: prune the targeted layers to exactly `target_sparsity` (see the module
    docstring for how the count is split), correct the survivors; returns the reached sparsity."""
    check_scope(scope)
    layers = target_layers(model, targets)
    started = time.perf_counter()
    hessians = {name: dampen(h, damp) for name, h in collect_hessians(model, layers, batches).items()}
    plans = {}
    for name, layer in layers.items():
        _, group = _groups(layer)
        w = layer.masked_weight().detach().reshape(len(group), -1)
        keep = layer.mask.reshape(len(group), -1)
        plans[name] = (w, keep, group, *surgeon_order(w, keep, hessians[name], group))
    saliency = {name: plan[-1].view_as(layers[name].weight) for name, plan in plans.items()}
    masks = lowest_saliency_masks(layers, saliency, target_sparsity, scope)  # only its counts are used
    for name, layer in layers.items():
        w, keep, group, order, losses, _ = plans[name]
        n = int((~masks[name]).sum()) - int((~keep).sum())
        counts = row_counts(losses, n)
        after = keep_after(keep, order, counts)
        new = surgeon_weights(w, after, hessians[name], group)
        steps = torch.arange(losses.shape[1], device=losses.device)
        predicted = float(losses[steps < counts.unsqueeze(1)].sum())  # sequential OBS steps add up exactly
        with torch.no_grad():
            layer.weight.copy_(new.view_as(layer.weight))
        apply_masks({name: layer}, {name: after.view_as(layer.mask)}, optimizers)
        log.debug("prune=obs: %s loses %d weights, layer-wise loss +%.4g", name, n, predicted)
    log.info("prune=obs: round to sparsity %.4f took %.1f s", target_sparsity, time.perf_counter() - started)
    return layers_sparsity(layers.values())


class OBSPruning(PruningCallback):
    """OBS at the schedule's events, Hessians from `batches` training batches; retraining in between.
    `damp`: lambda of H + lambda * mean(diag H) * I. `schedule`: the Schedule's keys (Schedule.keys())."""

    def __init__(
        self,
        damp: float = 0.01,
        batches: int = 20,
        scope: str = "layer",
        targets: Sequence[str] | None = None,
        **schedule: Any,
    ) -> None:
        super().__init__(targets=targets, schedule=Schedule.from_keys(**schedule))
        if not damp >= 0:
            raise ValueError(f"prune.damp={damp} must be >= 0 (0.01 is usual)")
        if batches < 1:
            raise ValueError(f"prune.batches={batches} must be >= 1")
        self.damp, self.batches, self.scope = float(damp), batches, check_scope(scope)

    def prune(self, model: nn.Module, target: float, context: PruneContext) -> None:
        obs_prune(model, context.batches(self.batches), target, self.targets, self.scope, self.damp, context.optimizers)
