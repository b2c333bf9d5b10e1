"""The one LightningModule: trains, validates and tests any classifier of ssmoe.

A model returns ModelOutput(logits, aux); the training loss is cross-entropy plus the sum of the
auxiliary losses (gates put their balancing or t-SNE losses there, already weighted).

The optimizer step is taken in `training_step` (Lightning's manual optimization: zero_grad, backward,
step, through Lightning's optimizer wrapper, so precision plugins, DDP and the optimizer hooks still
apply): the same update as Lightning's automatic path, which wraps each step in a closure and more
hook calls (dense FCL, 1 thread, interleaved in one process: 3.14 vs 3.06 ms a step). The automatic
path is kept where only it works: a trainer that clips or accumulates gradients, and LBFGS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import increment_version
from torchmetrics.classification import MulticlassAccuracy

from ssmoe_cli import metrics as names

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def mark_updated(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Bump the version counters of the optimizer's parameters after its step (an optimizer step
    post-hook: ClassifierModule registers it, so every step is covered, on Lightning's manual and
    automatic paths alike). Fused kernels (Adam's `fused=True`, the default optim.fused) write the
    weights in place without bumping them, and the inference caches of masked weights key on them
    (ssmoe_cli.models.layers): without this, evaluation after a step ran on the weights of the previous
    evaluation (ptsne_moe 39.6% instead of 85.9% test accuracy after 2 epochs). One call for all
    parameters; a second bump after a kernel that did its own is harmless."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if params:
        increment_version(params)


class ClassifierModule(pl.LightningModule):
    """scheduler: built on the optimizer and stepped once per epoch (None: a constant learning rate)."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.scheduler_factory = scheduler
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        # The epoch's training losses, summed over its batches (each weighted by its size); logged once
        # per epoch in on_train_epoch_end.
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits

    @property
    def automatic_optimization(self) -> bool:
        """Lightning's automatic optimization only for a trainer that clips or accumulates gradients
        (Lightning refuses both in manual optimization), an optimizer whose step re-evaluates the
        loss through a closure (LBFGS: only the automatic path re-runs the training step), or with
        no trainer attached."""
        trainer = self._trainer
        if trainer is None or getattr(self.optimizer_factory, "func", self.optimizer_factory) is torch.optim.LBFGS:
            return True
        return bool(trainer.gradient_clip_val) or trainer.accumulate_grad_batches != 1

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.model(x)
        ce = F.cross_entropy(out.logits, y)
        loss = ce + sum(out.aux.values()) if out.aux else ce
        # Summed here and logged once per epoch (on_train_epoch_end) rather than with self.log per step:
        # every self.log call moves Lightning's result record to the value's device through a deep copy,
        # 11% of the dense FCL's training loop on CPU (py-spy; benchmarks/lightning_overhead.py).
        n = len(y)
        self._epoch_count += n
        self._add(names.TRAIN_LOSS, loss, n)
        for name, value in out.aux.items():
            self._add(names.aux_loss(name), value, n)
        if not self.automatic_optimization:
            self._step(loss, batch_idx)
        return loss

    def _step(self, loss: torch.Tensor, batch_idx: int) -> None:
        """One optimizer step, then the epoch's scheduler step after its last batch: where Lightning's
        automatic path takes them (before validation, so checkpoints hold the same state)."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        if batch_idx + 1 == self.trainer.num_training_batches:
            for config in self.trainer.lr_scheduler_configs:
                self.lr_scheduler_step(config.scheduler, None)

    def _add(self, name: str, value: torch.Tensor, n: int) -> None:
        weighted = value.detach() * n
        total = self._epoch_sums.get(name)
        self._epoch_sums[name] = weighted if total is None else total + weighted

    def on_train_epoch_start(self) -> None:
        self._epoch_sums = {}
        self._epoch_count = 0

    def on_train_epoch_end(self) -> None:
        if not self._epoch_count:
            return
        for name, total in self._epoch_sums.items():
            # The epoch's mean, weighted by batch size as Lightning's on_epoch mean is. sync_dist: under DDP
            # Lightning sums value x batch_size and the batch sizes over the processes, so the logged value
            # is the mean over every process's shard, not rank 0's alone (a no-op in a single process).
            count = self._epoch_count
            self.log(name, total / count, on_step=False, on_epoch=True, batch_size=count, sync_dist=True)

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, acc: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self.model(x).logits
        # sync_dist: under DDP each process sees a shard; the logged value is over all of them.
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        acc.update(logits, y)
        self.log(f"{stage}/acc", acc, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.model.parameters())
        optimizer.register_step_post_hook(mark_updated)
        if self.scheduler_factory is None:
            return optimizer
        # Lightning steps it after every epoch and keeps its state in checkpoints (ckpt_path=last).
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
