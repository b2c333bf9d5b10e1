"""Optimal Brain Damage (LeCun, Denker & Solla 1990): delete the weights whose removal costs the
least loss to second order, s_k = h_kk * w_k^2 / 2, with h_kk the diagonal of the Hessian of the
training loss; train, score, delete the lowest, retrain, repeat.

The loss is the mean cross-entropy of the model on training batches (auxiliary gate losses left
out), evaluated in train mode without any optimizer step. Its Hessian diagonal is estimated by:
- fisher: the empirical Fisher / Gauss-Newton diagonal, the MEAN over the N samples of the
  per-sample squared gradients, (1/N) sum_i (d l_i / d w)^2. It must be formed per sample: the
  square of the batch-mean gradient, (1/N sum_i d l_i / d w)^2, is a different and much smaller
  quantity (that is the bug of public ports). Per-sample gradients come from torch.func
  (vmap of grad of functional_call); a model that cannot be vmapped (data-dependent shapes or
  control flow) falls back to a loop over samples, which is exact too but slow.
- hutchinson: E_z[z * (H z)] with Rademacher z (Bekas et al. 2007), H z by double backward; the
  mean over batches and `probes` probes per batch. Unbiased but noisy; it may be negative where
  the loss is locally concave, and a negative saliency is pruned first (removing that weight is
  predicted to lower the loss).
Both estimate the diagonal of the Hessian of the mean loss, so their scales agree. Masked weights
get saliency 0 (they are zero) and are kept pruned whatever their score.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ssmoe_cli.models.base import ModelOutput, vmappable
from ssmoe_cli.models.layers import Masked
from ssmoe_cli.prune.callback import Batch, PruneContext, PruningCallback
from ssmoe_cli.prune.masks import DEFAULT_TARGETS, check_scope, prune_to, target_layers
from ssmoe_cli.prune.schedule import Schedule

HESSIANS = ("fisher", "hutchinson")
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def cross_entropy(output: Any, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a ModelOutput's logits (or of plain logits)."""
    return F.cross_entropy(output.logits if isinstance(output, ModelOutput) else output, y)


@contextlib.contextmanager
def _requiring_grad(weights: Iterable[torch.Tensor]) -> Iterator[None]:
    """Differentiate w.r.t. weights even of frozen layers (e.g. a pretrained t-SNE gate), in grad mode."""
    weights = list(weights)
    before = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for w, flag in zip(weights, before, strict=True):
            w.requires_grad_(flag)


def _squared_grads_vmap(
    model: nn.Module, layers: Mapping[str, Masked], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, chunk: int
) -> list[torch.Tensor]:
    """Sum over the samples of (d l_i / d w)^2 for each layer, per-sample gradients by vmap."""
    params = {f"{name}.weight": layer.weight.detach() for name, layer in layers.items()}

    def sample_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0), randomness="different")
    sums = [torch.zeros_like(p) for p in params.values()]
    # torch.func.grad differentiates under no_grad too; no_grad only stops building a graph from
    # the per-sample gradients back to the other parameters (biases), which nothing needs.
    # vmappable: the model's own switch to a forward without data-dependent shapes (a mixture of
    # experts' dense dispatch), the same function on batches of one sample.
    with vmappable(model), torch.no_grad():
        for xc, yc in zip(x.split(chunk), y.split(chunk), strict=True):  # chunks bound the (B, *w) memory
            grads = per_sample(params, xc, yc)
            for acc, g in zip(sums, grads.values(), strict=True):
                acc += g.square().sum(0)
    return sums


def _squared_grads_loop(
    model: nn.Module, layers: Mapping[str, Masked], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> list[torch.Tensor]:
    """Sum over the samples of (d l_i / d w)^2, one backward pass per sample."""
    weights = [layer.weight for layer in layers.values()]
    sums = [torch.zeros_like(w) for w in weights]
    for i in range(len(x)):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        for acc, g in zip(sums, torch.autograd.grad(loss, weights, allow_unused=True), strict=True):
            if g is not None:
                acc += g.square()
    return sums


def fisher_diagonal(
    model: nn.Module,
    layers: Mapping[str, Masked],
    batches: Iterable[Batch],
    loss_fn: LossFn = cross_entropy,
    chunk: int = 64,
) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal of each layer's weight: (1/N) sum_i (d l_i / d w)^2 over the N
    samples of `batches`, l_i the loss of sample i alone (loss_fn on a batch of one). Layer names
    as target_layers gives them."""
    sums = [torch.zeros_like(layer.weight) for layer in layers.values()]
    count, vectorised = 0, True
    with _requiring_grad(layer.weight for layer in layers.values()):
        for x, y in batches:
            squares = None
            if vectorised:
                try:
                    squares = _squared_grads_vmap(model, layers, x, y, loss_fn, chunk)
                except RuntimeError:  # data-dependent control flow or shapes: vmap cannot batch it
                    vectorised = False
            if squares is None:
                squares = _squared_grads_loop(model, layers, x, y, loss_fn)
            for acc, sq in zip(sums, squares, strict=True):
                acc += sq
            count += len(x)
    return {name: s / max(count, 1) for name, s in zip(layers, sums, strict=True)}


def hutchinson_diagonal(
    model: nn.Module,
    layers: Mapping[str, Masked],
    batches: Iterable[Batch],
    probes: int = 1,
    generator: torch.Generator | None = None,
    loss_fn: LossFn = cross_entropy,
) -> dict[str, torch.Tensor]:
    """Hutchinson estimate of the Hessian diagonal of the mean batch loss: the mean of z * (H z)
    over batches and probes, z Rademacher over all targeted weights jointly."""
    generator = generator or torch.Generator().manual_seed(0)
    weights = [layer.weight for layer in layers.values()]
    if not weights:
        return {}
    sums = [torch.zeros_like(w) for w in weights]
    count = 0
    with _requiring_grad(weights):
        for x, y in batches:
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
            # A weight the loss ignores (or is linear in) has a zero Hessian row: leave it out of H z.
            used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            for p in range(probes):
                zs = [(torch.randint(0, 2, w.shape, generator=generator) * 2 - 1).to(w) for w in weights]
                hz = torch.autograd.grad(
                    [grads[i] for i in used],
                    weights,
                    grad_outputs=[zs[i] for i in used],
                    retain_graph=p < probes - 1,
                    allow_unused=True,
                )
                for acc, z, h in zip(sums, zs, hz, strict=True):
                    if h is not None:
                        acc += z * h.detach()
            count += probes
    return {name: s / max(count, 1) for name, s in zip(layers, sums, strict=True)}


def obd_saliency(
    model: nn.Module,
    layers: Mapping[str, Masked],
    batches: Iterable[Batch],
    hessian: str = "fisher",
    probes: int = 1,
    seed: int = 0,
    loss_fn: LossFn = cross_entropy,
) -> dict[str, torch.Tensor]:
    """s = h_kk * w^2 / 2 for every weight of the given layers (masked weights: 0)."""
    if hessian == "fisher":
        diag = fisher_diagonal(model, layers, batches, loss_fn)
    elif hessian == "hutchinson":
        diag = hutchinson_diagonal(model, layers, batches, probes, torch.Generator().manual_seed(seed), loss_fn)
    else:
        raise ValueError(f"prune.hessian={hessian!r}: choose fisher or hutchinson")
    return {name: diag[name] * layer.masked_weight().detach().square() / 2 for name, layer in layers.items()}


def obd_prune(
    model: nn.Module,
    batches: Iterable[Batch],
    target_sparsity: float,
    targets: Sequence[str] = DEFAULT_TARGETS,
    hessian: str = "fisher",
    probes: int = 1,
    scope: str = "layer",
    seed: int = 0,
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> float:
    """One OBD round on a plain model: score on `batches` (train mode), prune the lowest saliencies
    to exactly `target_sparsity`; returns the reached sparsity."""
    layers = target_layers(model, targets)
    was_training = model.training
    model.train()
    try:
        saliency = obd_saliency(model, layers, batches, hessian, probes, seed)
    finally:
        model.train(was_training)
    return prune_to(model, saliency, target_sparsity, scope, optimizers)


class OBDPruning(PruningCallback):
    """OBD at the schedule's events, scored on `batches` training batches; retraining in between.
    `schedule`: the Schedule's keys (prune.schedule, prune.rounds, ...: see Schedule.keys())."""

    def __init__(
        self,
        hessian: str = "fisher",
        batches: int = 10,
        probes: int = 4,
        scope: str = "layer",
        seed: int = 0,
        targets: Sequence[str] | None = None,
        **schedule: Any,
    ) -> None:
        super().__init__(targets=targets, schedule=Schedule.from_keys(**schedule))
        if hessian not in HESSIANS:
            raise ValueError(f"prune.hessian={hessian!r}: choose fisher or hutchinson")
        if batches < 1 or probes < 1:
            raise ValueError(f"prune.batches={batches} and prune.probes={probes} must be >= 1")
        check_scope(scope)
        self.hessian, self.batches, self.probes, self.scope, self.seed = hessian, batches, probes, scope, seed

    def prune(self, model: nn.Module, target: float, context: PruneContext) -> None:
        batches = context.batches(self.batches)
        # A fresh probe seed per round, reproducible from the run's seed.
        seed = self.seed + len(self.history)
        obd_prune(model, batches, target, self.targets, self.hessian, self.probes, self.scope, seed, context.optimizers)
