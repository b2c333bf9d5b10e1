"""What every pruning method shares: choosing the targeted layers, measuring sparsity, installing
masks so that the final sparsity is exactly the target, keeping masked weights at zero through any
optimizer, and the schedule of pruning events (in epochs or optimizer steps).

Pruning only ever removes weights: a mask is installed as (new mask AND old mask), so weights that
are already masked (e.g. the padding of a mixture of experts' routes) stay masked and count as
pruned. Sparsity is measured over the weights of the targeted layers (biases excluded) and counts
every weight that is masked or exactly zero, like the accounting's params/nonzero does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.models.layers import Masked, masked_layers

log = logging.getLogger(__name__)

ROLES = ("hidden", "output", "route", "gate")
DEFAULT_TARGETS = ("hidden", "output", "route")
SCOPES = ("layer", "global")


# -- targets and sparsity ---------------------------------------------------------------------------
def model_of(module: nn.Module) -> nn.Module:
    """The network inside a ClassifierModule (its `.model`), or the module itself."""
    inner = getattr(module, "model", None)
    return inner if isinstance(inner, nn.Module) else module


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
    """The masked layers whose role is in `targets`, by qualified name in the network (model order)."""
    roles = set(check_targets(targets))
    return {
        name: m
        for name, m in model_of(model).named_modules()
        if isinstance(m, Masked) and m.role in roles and m.weight.numel()
    }


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
    """One row per masked layer: name, role, shape, weights (dense count), nonzero, sparsity."""
    rows = []
    for name, m in model_of(model).named_modules():
        if isinstance(m, Masked):
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
    layers = masked_layers(model)

    @torch.no_grad()
    def rezero(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for layer in layers:
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
    """Keep-masks pruning the lowest-saliency weights: round(target * n) of each layer's n weights
    (scope "layer"), or round(target * N) of all N targeted weights together (scope "global").
    Masked weights rank lowest, so they are part of the count."""
    check_scope(scope)
    scores = {
        name: torch.where(layers[name].mask, s.detach().float(), -math.inf).flatten() for name, s in saliency.items()
    }
    if scope == "layer":
        return {
            name: _prune_lowest(s, round(target_sparsity * s.numel())).view_as(layers[name].mask)
            for name, s in scores.items()
        }
    flat = torch.cat(list(scores.values()))
    keep = _prune_lowest(flat, round(target_sparsity * flat.numel()))
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
    exactly round(target * n) of their weights are pruned; returns the reached sparsity of those
    layers: the target, unless a layer already had more masked weights than that, or more
    unmasked weights that are exactly zero (they count as pruned; the weights are never 0 after
    training in practice, but e.g. a zero-initialised gate is)."""
    modules = dict(model_of(model).named_modules())
    layers = {name: modules[name] for name in saliency_by_layer}
    apply_masks(layers, lowest_saliency_masks(layers, saliency_by_layer, target_sparsity, scope), optimizers)
    return layers_sparsity(layers.values())


# -- schedules --------------------------------------------------------------------------------------
SCHEDULES = ("oneshot", "iterative", "gradual")
UNITS = ("epoch", "step")


@dataclass(frozen=True)
class Schedule:
    """Pruning events r = 1..n at `start + (r - 1) * every` (epochs or optimizer steps done).

    The sparsity reached at event r of n:
    - oneshot: the target at once (n = 1; `rounds` and `every` are not used).
    - iterative (Han et al. 2015): every round prunes the same fraction of the surviving weights,
      so the kept fraction falls geometrically: s_r = 1 - (1 - s_f) ** (r / n); s_n = s_f.
    - gradual (Zhu & Gupta 2017): s_r = s_f + (s_i - s_f) * (1 - r / n) ** 3, i.e. their
      s_t = s_f + (s_i - s_f)(1 - t/T)^3 at t = r, T = n (t = 0 is the state before event 1):
      fast pruning first, while there are many redundant weights, slower towards the end.
    """

    kind: str = "iterative"
    target: float = 0.9
    rounds: int = 3
    start: int = 0
    every: int = 1
    unit: str = "epoch"
    initial: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"prune.schedule={self.kind!r}: choose one of {', '.join(SCHEDULES)}")
        if self.unit not in UNITS:
            raise ValueError(f"prune.unit={self.unit!r}: choose epoch or step")
        if not 0.0 <= self.target < 1.0:
            raise ValueError(f"prune.target_sparsity={self.target} must be in [0, 1)")
        if not 0.0 <= self.initial <= self.target:
            raise ValueError(f"prune.initial_sparsity={self.initial} must be in [0, target_sparsity={self.target}]")
        if self.rounds < 1 or self.every < 1 or self.start < 0:
            raise ValueError(
                f"prune.rounds={self.rounds}, prune.every={self.every}, prune.start={self.start}: "
                "rounds and every must be >= 1, start >= 0"
            )

    @property
    def n(self) -> int:
        return 1 if self.kind == "oneshot" else self.rounds

    def events(self) -> list[int]:
        """When each round happens: the number of epochs (or steps) trained before it."""
        return [self.start + r * self.every for r in range(self.n)]

    def sparsity(self, r: int) -> float:
        """Target sparsity after round r (1-based)."""
        if self.kind == "oneshot":
            return self.target
        if self.kind == "iterative":
            return 1.0 - (1.0 - self.target) ** (r / self.n)
        return self.target + (self.initial - self.target) * (1.0 - r / self.n) ** 3

    def sparsities(self) -> list[float]:
        return [self.sparsity(r) for r in range(1, self.n + 1)]

    def required(self, min_retrain: int) -> int:
        """Epochs (or steps) of training the schedule needs: last event + min_retrain."""
        return self.events()[-1] + min_retrain

    def check(self, budget: float, min_retrain: int) -> None:
        """Raise SsmoeError when training (budget epochs or steps) ends before the last round has
        had min_retrain epochs (steps) of retraining."""
        need = self.required(min_retrain)
        if budget >= need:
            return
        last = self.events()[-1]
        when = f"prune.start={self.start}"
        if self.n > 1:
            when += f" + ({self.n} - 1) rounds x prune.every={self.every}"
        if self.unit == "epoch":
            needs = f"trainer.max_epochs >= {need}, got {budget:g}; raise trainer.max_epochs"
        else:
            needs = (
                f"{need} training steps, the trainer runs {budget:g}; "
                "raise trainer.max_epochs (or trainer.max_steps / trainer.limit_train_batches)"
            )
        raise SsmoeError(
            f"the last pruning event ({when} = {self.unit} {last}) plus prune.min_retrain={min_retrain} "
            f"{self.unit}s of retraining needs {needs}, or lower prune.start / prune.rounds / prune.every"
        )


# -- the callback -----------------------------------------------------------------------------------
class PruningCallback(pl.Callback):
    """Base of the pruning callbacks. Keeps masked weights at zero after every optimizer step, runs
    `prune(trainer, pl_module, sparsity)` at the schedule's events (if it has a schedule) and logs
    prune/sparsity at the end of each training epoch."""

    needs_targets = True  # a method that prunes refuses a selection that matches no layer

    def __init__(
        self, targets: Sequence[str] | None = None, schedule: Schedule | None = None, min_retrain: int = 1
    ) -> None:
        if min_retrain < 0:
            raise ValueError(f"prune.min_retrain={min_retrain} must be >= 0")
        self.targets = check_targets(targets)
        self.schedule = schedule
        self.min_retrain = min_retrain
        self.done: set[int] = set()  # rounds (1-based) already applied; saved in checkpoints
        self.history: list[dict[str, float]] = []  # one row per applied round
        self._hooks: list[RemovableHandle] = []

    # -- public helpers ---------------------------------------------------------------------------
    def final_sparsity(self, model: nn.Module) -> float:
        """prune/sparsity: the fraction of masked or zero weights over this callback's targets."""
        return sparsity(model, self.targets)

    def prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float) -> None:
        """Bring the targeted weights to `target` sparsity (methods with a schedule implement it)."""
        raise NotImplementedError(f"{type(self).__name__} has no scheduled pruning")

    # -- Lightning hooks --------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = model_of(pl_module)
        if self.needs_targets and not target_layers(model, self.targets):
            roles = sorted({m.role for m in masked_layers(model)})
            raise SsmoeError(
                f"prune.targets={self.targets} selects no layer of this model (its roles: {', '.join(roles)}); "
                "choose prune.targets among those"
            )
        if self.schedule is not None:
            self.schedule.check(self._budget(trainer), self.min_retrain)
        self._remove_hooks()
        self._hooks = [register_mask_hook(opt, model) for opt in trainer.optimizers]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule is not None and self.schedule.unit == "epoch":
            self._run_due(trainer, pl_module, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.schedule is not None and self.schedule.unit == "step":
            self._run_due(trainer, pl_module, trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("prune/sparsity", self.final_sparsity(pl_module), on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule is not None and len(self.done) < self.schedule.n:
            log.warning(
                "prune: training stopped after %d of %d pruning rounds; sparsity %.4f instead of %.4f",
                len(self.done),
                self.schedule.n,
                self.final_sparsity(pl_module),
                self.schedule.target,
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        return {"done": sorted(self.done), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = set(state_dict.get("done", []))
        self.history = list(state_dict.get("history", []))

    # -- internals --------------------------------------------------------------------------------
    def _budget(self, trainer: pl.Trainer) -> float:
        """Epochs (or optimizer steps) this fit will train; inf when unbounded."""
        if self.schedule is not None and self.schedule.unit == "epoch":
            return math.inf if trainer.max_epochs is None or trainer.max_epochs < 0 else trainer.max_epochs
        return float(trainer.estimated_stepping_batches)

    def _run_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule, now: int) -> None:
        """Apply the latest round whose time has come (earlier missed rounds, e.g. after resuming
        from a checkpoint, are covered by it: the round targets are absolute sparsities)."""
        assert self.schedule is not None
        due = [r for r, at in enumerate(self.schedule.events(), start=1) if at <= now and r not in self.done]
        if not due:
            return
        r = max(due)
        target = self.schedule.sparsity(r)
        self.prune(trainer, pl_module, target)
        self.done.update(due)
        reached = self.final_sparsity(pl_module)
        self.history.append({"round": r, "at": now, "target": target, "sparsity": reached})
        log.info(
            "prune round %d/%d at %s %d: target sparsity %.4f, reached %.4f",
            r,
            self.schedule.n,
            self.schedule.unit,
            now,
            target,
            reached,
        )

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
