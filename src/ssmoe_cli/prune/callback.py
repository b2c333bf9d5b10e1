"""The Lightning side of pruning: one callback base that every sparsity method subclasses.

It unwraps the LightningModule once (when fitting starts) and hands the methods the network itself,
an nn.Module, with a `PruneContext` (the optimizers, and a way to read training batches); the
methods never see Lightning. It keeps masked weights at zero after every optimizer step, checks the
schedule fits the training budget before any work, runs `prune(model, target, context)` at the
schedule's events, and logs prune/sparsity at the end of each training epoch.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ssmoe_cli import metrics as names
from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.models.base import prunable_layers
from ssmoe_cli.module import ClassifierModule
from ssmoe_cli.prune.masks import budget_sparsity, check_targets, register_mask_hook, sparsity, target_layers
from ssmoe_cli.prune.schedule import Schedule

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PruneContext:
    """What a pruning step may use besides the model: the optimizers whose state it must zero where
    it masks (apply_masks / prune_to take them), and `batches(n)`, the first n training batches
    (inputs, labels) on the model's device."""

    optimizers: Sequence[torch.optim.Optimizer]
    batches: Callable[[int], list[Batch]]


def network_of(pl_module: pl.LightningModule) -> nn.Module:
    """The network a LightningModule trains: a ClassifierModule's model, else the module itself."""
    return pl_module.model if isinstance(pl_module, ClassifierModule) else pl_module


class PruningCallback(pl.Callback):
    """Base of the sparsity methods. A method with a schedule implements `prune`; one that fixes its
    masks before training (StochasticNet) implements `start`. `targets` are the roles it prunes."""

    needs_targets = True  # a method that prunes refuses a selection that matches no layer

    def __init__(self, targets: Sequence[str] | None = None, schedule: Schedule | None = None) -> None:
        self.targets = check_targets(targets)
        self.schedule = schedule
        self.done: set[int] = set()  # rounds (1-based) already applied; saved in checkpoints
        self.history: list[dict[str, float]] = []  # one row per applied round
        self._hooks: list[RemovableHandle] = []
        self._model: nn.Module | None = None
        self._trainer: pl.Trainer | None = None

    # -- what a method implements -----------------------------------------------------------------
    def start(self, model: nn.Module, context: PruneContext) -> None:
        """Once when fitting starts, before the first training step; default: nothing."""

    def prune(self, model: nn.Module, target: float, context: PruneContext) -> None:
        """Bring the targeted weights to `target` sparsity (methods with a schedule implement it)."""
        raise NotImplementedError(f"{type(self).__name__} has no scheduled pruning")

    # -- public helpers ---------------------------------------------------------------------------
    def final_sparsity(self, model: nn.Module) -> float:
        """prune/sparsity: the fraction of masked or zero weights over this callback's targets."""
        return sparsity(model, self.targets)

    # -- Lightning hooks --------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer, self._model = trainer, network_of(pl_module)
        model = self._model
        if self.needs_targets and not target_layers(model, self.targets):
            roles = sorted({m.role for m in prunable_layers(model).values()})
            raise SsmoeError(
                f"prune.targets={self.targets} selects no layer of this model (its roles: {', '.join(roles)}); "
                "choose prune.targets among those"
            )
        if self.schedule is not None:
            self.schedule.check(self._budget(trainer))
            self._resolved_schedule(model)  # an unreachable prune.target_nonzero fails now, not after epochs
        self._remove_hooks()
        self._hooks = [register_mask_hook(opt, model) for opt in trainer.optimizers]
        self.start(model, self._context())

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule is not None and self.schedule.unit == "epoch":
            self._run_due(trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.schedule is not None and self.schedule.unit == "step":
            self._run_due(trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The same value on every DDP rank (masks are identical); sync_dist keeps Lightning quiet about it.
        pl_module.log(
            names.PRUNE_SPARSITY, self.final_sparsity(self._network()), on_step=False, on_epoch=True, sync_dist=True
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Post-training pruning: an event at the very end of training (prune.start = trainer.max_epochs
        with prune.min_retrain=0, the setting of OBC and SparseGPT) runs here, with no retraining, and
        the validation set is measured again so that val/loss and val/acc are the pruned model's."""
        if self.schedule is None:
            return
        now = trainer.current_epoch if self.schedule.unit == "epoch" else trainer.global_step
        if self._run_due(now) and not trainer.sanity_checking:
            self._revalidate(trainer, pl_module)

    @torch.no_grad()
    def _revalidate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is None:
            return
        model = self._network()
        was_training = model.training
        model.eval()
        loss, correct, count = 0.0, 0, 0
        try:
            for x, y in datamodule.val_dataloader():
                x, y = x.to(pl_module.device), y.to(pl_module.device)
                logits = model(x).logits
                loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                count += len(y)
        finally:
            model.train(was_training)
        if not count:
            return
        values = {names.VAL_LOSS: loss / count, names.VAL_ACC: correct / count}
        # callback_metrics: what `ssmoe train` reports as the run's validation result (and Optuna optimises).
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(values, step=trainer.global_step)
        log.info("prune: after post-training pruning, val/acc %.4f", values[names.VAL_ACC])

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule is not None and len(self.done) < self.schedule.n:
            budget = self.schedule.target_nonzero
            log.warning(
                "prune: training stopped after %d of %d pruning rounds; sparsity %.4f instead of %s",
                len(self.done),
                self.schedule.n,
                self.final_sparsity(self._network()),
                f"{self.schedule.target:.4f}" if budget is None else f"the prune.target_nonzero={budget} budget",
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        return {"done": sorted(self.done), "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = set(state_dict.get("done", []))
        self.history = list(state_dict.get("history", []))

    # -- internals --------------------------------------------------------------------------------
    def _network(self) -> nn.Module:
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__}: used before on_fit_start")
        return self._model

    def _context(self) -> PruneContext:
        trainer = self._trainer
        assert trainer is not None
        return PruneContext(optimizers=list(trainer.optimizers), batches=self._training_batches)

    def _training_batches(self, n: int) -> list[Batch]:
        """The first n batches of a training loader (the datamodule's, else the trainer's)."""
        trainer = self._trainer
        assert trainer is not None
        device = next(self._network().parameters()).device
        datamodule = trainer.datamodule
        loader = datamodule.train_dataloader() if datamodule is not None else trainer.train_dataloader
        return [(b[0].to(device), b[1].to(device)) for b in itertools.islice(loader, n)]

    def _budget(self, trainer: pl.Trainer) -> float:
        """Epochs (or optimizer steps) this fit will train; inf when unbounded."""
        if self.schedule is not None and self.schedule.unit == "epoch":
            return math.inf if trainer.max_epochs is None or trainer.max_epochs < 0 else trainer.max_epochs
        return float(trainer.estimated_stepping_batches)

    def _run_due(self, now: int) -> bool:
        """Apply the latest round whose time has come (earlier missed rounds, e.g. after resuming
        from a checkpoint, are covered by it: the round targets are absolute sparsities); True if one ran."""
        assert self.schedule is not None
        due = [r for r, at in enumerate(self.schedule.events(), start=1) if at <= now and r not in self.done]
        if not due:
            return False
        r = max(due)
        model = self._network()
        target = self._resolved_schedule(model).sparsity(r)
        self.prune(model, target, self._context())
        self.done.update(due)
        reached = self.final_sparsity(model)
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
        return True

    def _resolved_schedule(self, model: nn.Module) -> Schedule:
        """The schedule with its final sparsity: prune.target_sparsity, or the sparsity that reaches
        prune.target_nonzero on this model now (resolved at every round, from the current masks)."""
        assert self.schedule is not None
        budget = self.schedule.target_nonzero
        if budget is None:
            return self.schedule
        return self.schedule.for_sparsity(budget_sparsity(model, self.targets, budget))

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
