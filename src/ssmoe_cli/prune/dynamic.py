"""Dynamic sparse training, shared by SET and RigL: the network is sparse from the first step and its
connectivity changes during training while the count of active connections stays exactly the same.

`DynamicSparsity` is their Lightning callback: it draws the first graph (allocation.py: Erdos-Renyi,
ERK or uniform layer densities, exact in total), runs the updates (rewire.py: drop by magnitude, then
grow, new weights at 0 with a blank optimizer state) at their times until the topology freezes, logs
the turnover and keeps what a resumed run needs. A method gives its drop fraction and growth scores.
Positions masked when the model was built (route padding of a mixture of experts) are never
available: the callback records them once (`available`) and never grows there.

Counting: the masks hold exactly the budget (prune.target_nonzero or density) at every moment;
params/nonzero counts values, so a weight grown at 0 counts from the optimizer step after its growth
on. Updates run at the start of a training batch; after the drop, the growth scores come from that
same batch's dense gradient (with the random draws the step will make), and both methods grow where
it is nonzero first, so the step that follows moves every grown weight off 0 and params/nonzero
equals the budget again after it. A connection that no gradient reaches would stay 0 (when fewer
positions with a gradient exist than are needed): it is then active but uncounted, the exported
file (which stores nonzero values) leaves it out, and the run warns with the count when training ends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ssmoe_cli import metrics as names
from ssmoe_cli.models.layers import Masked
from ssmoe_cli.prune.allocation import check_allocation, initial_masks, keep_counts
from ssmoe_cli.prune.callback import PruneContext, PruningCallback
from ssmoe_cli.prune.masks import check_budget, target_layers
from ssmoe_cli.prune.rewire import Batch, drop, grow, install
from ssmoe_cli.prune.schedule import UNITS

log = logging.getLogger(__name__)


# -- the Lightning side -----------------------------------------------------------------------------
class DynamicSparsity(PruningCallback):
    """Sparse from the first step, with the topology updated at `every` epochs or steps (`unit`) while
    the update time is below `stop` x the training length; after that the topology is frozen. A
    subclass gives the drop fraction at a time (`fraction`) and the growth scores (`grow_scores`)."""

    signed = False  # drop the smallest |w| (RigL); SET drops by sign
    every_key = "every"  # the config key of the update interval, for messages (RigL: delta)

    def __init__(
        self,
        density: float,
        target_nonzero: int | None,
        allocation: str,
        every: int,
        unit: str,
        stop: float,
        seed: int,
        targets: Sequence[str] | None,
    ) -> None:
        super().__init__(targets=targets)
        if not 0.0 < density <= 1.0:
            raise ValueError(f"prune.density={density} must be in (0, 1]")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"prune.{self.every_key}={every!r} must be a whole number >= 1")
        if unit not in UNITS:
            raise ValueError(f"prune.unit={unit!r}: choose epoch or step")
        if not 0.0 <= stop <= 1.0:
            raise ValueError(f"prune.stop={stop} must be in [0, 1] (a fraction of the training)")
        self.density, self.target_nonzero = density, check_budget(target_nonzero)
        self.allocation = check_allocation(allocation)
        self.every, self.unit, self.stop, self.seed = every, unit, stop, seed
        self.available: dict[str, torch.Tensor] = {}  # positions that exist by construction, per layer
        self.last_at = -1  # time of the last update (gradient accumulation: several batches per step)
        self._epoch_turnover = 0.0
        self._horizon = math.inf

    # -- what a method implements -----------------------------------------------------------------
    def fraction(self, now: int) -> float:
        """Fraction of each layer's active weights replaced by the update at time `now`."""
        raise NotImplementedError

    def grow_scores(self, model: nn.Module, layers: Mapping[str, Masked], batch: Batch) -> dict[str, torch.Tensor]:
        """Per layer, where to grow: the largest scores first (equal scores in random order)."""
        raise NotImplementedError

    # -- the start ----------------------------------------------------------------------------------
    def start(self, model: nn.Module, context: PruneContext) -> None:
        layers = target_layers(model, self.targets)
        if self.available:  # resumed from a checkpoint: the evolved masks came with the model
            self.available = {name: mask.to(layers[name].mask.device) for name, mask in self.available.items()}
            return
        self.available = {name: layer.mask.clone() for name, layer in layers.items()}
        counts = keep_counts(
            model, layers, self.available, self.allocation, self.density, self.targets, self.target_nonzero
        )
        for name, mask in initial_masks(layers, self.available, counts, self.seed).items():
            install(layers[name], mask, context.optimizers)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.unit == "epoch":
            self._horizon = math.inf if trainer.max_epochs is None or trainer.max_epochs < 0 else trainer.max_epochs
        else:
            self._horizon = float(trainer.estimated_stepping_batches)
        first = self.every
        if not first < self.stop * self._horizon:
            log.warning(
                "prune: no topology update fits in this training (the first is at %s %d, the topology freezes "
                "at prune.stop=%s x %s %s): the sparse network stays as drawn; raise trainer.max_epochs or "
                "lower prune.%s",
                self.unit,
                first,
                self.stop,
                f"{self._horizon:g}",
                self.unit + "s",
                self.every_key,
            )

    # -- updates ------------------------------------------------------------------------------------
    def due(self, now: int) -> bool:
        """Whether an update happens at time `now` (epochs or steps trained)."""
        return 0 < now < self.stop * self._horizon and now % self.every == 0 and now != self.last_at

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_turnover = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = trainer.current_epoch if self.unit == "epoch" else trainer.global_step
        if self.due(now):
            self.update(now, (batch[0], batch[1]), self._context().optimizers)

    def update(self, now: int, batch: Batch, optimizers: Sequence[torch.optim.Optimizer] = ()) -> float:
        """Drop and grow in every targeted layer that trains; returns the turnover (replaced / active)."""
        model = self._network()
        targeted = target_layers(model, self.targets)
        # A frozen layer (the pretrained t-SNE gate) keeps its first graph: a weight grown there would
        # stay 0 for good, and a dropped one would never be made up for by training.
        layers = {name: layer for name, layer in targeted.items() if layer.weight.requires_grad}
        if not layers:
            return 0.0
        device = next(iter(layers.values())).weight.device
        batch = (batch[0].to(device), batch[1].to(device))
        fraction = self.fraction(now)
        before = {name: layer.mask.clone() for name, layer in layers.items()}
        dropped = {name: drop(layer, fraction, self.signed, optimizers) for name, layer in layers.items()}
        # Scores on the network after the drop, the one new weights join: a unit that lost its inputs
        # to the drop has no gradient left and gets none of them (its new weights could not move off 0).
        scores = self.grow_scores(model, layers, batch) if any(dropped.values()) else {}
        # One generator per update, seeded by its index: a resumed run draws what the first would have.
        generator = torch.Generator().manual_seed(self.seed + 1 + len(self.history))
        for name, layer in layers.items():
            grow(layer, self.available[name], scores.get(name, layer.weight), dropped[name], generator, optimizers)
        replaced = sum(int((layer.mask & ~before[name]).sum()) for name, layer in layers.items())
        active = sum(int(layer.mask.sum()) for layer in targeted.values())
        turnover = replaced / active if active else 0.0
        self.last_at = now
        self._epoch_turnover += turnover
        self.history.append({"at": now, "fraction": fraction, "replaced": replaced, "turnover": turnover})
        log.info(
            "prune update at %s %d: drop fraction %.4f, %d connections replaced", self.unit, now, fraction, replaced
        )
        return turnover

    # -- metrics, end, checkpoints ------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        total = sum(row["turnover"] for row in self.history)
        for name, value in ((names.PRUNE_TURNOVER, self._epoch_turnover), (names.PRUNE_TURNOVER_TOTAL, total)):
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        layers = target_layers(self._network(), self.targets)
        idle = sum(int((layer.mask & (layer.weight == 0)).sum()) for layer in layers.values())
        if idle:
            log.warning(
                "prune: %d active connections are still exactly 0 (no gradient reached them since they grew); "
                "params/nonzero does not count them and is that much below the budget",
                idle,
            )

    def state_dict(self) -> dict[str, Any]:
        available = {name: mask.cpu() for name, mask in self.available.items()}
        return {**super().state_dict(), "available": available, "last_at": self.last_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.available = dict(state_dict.get("available", {}))
        self.last_at = int(state_dict.get("last_at", -1))
