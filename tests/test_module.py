"""The one LightningModule: trains any ModelOutput model, adds auxiliary losses to the task loss."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ssmoe_cli.data.synthetic import Synthetic
from ssmoe_cli.models.base import ModelOutput
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.module import ClassifierModule


class WithAux(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = FCL(8, 3, hidden=[8])
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.inner(x).logits, {"penalty": 0.5 * self.scale**2})


def test_aux_losses_are_added_to_the_training_loss():
    module = ClassifierModule(WithAux(), num_classes=3)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    loss = module.training_step((x, y), 0)
    ce = torch.nn.functional.cross_entropy(module.model(x).logits, y)
    assert torch.isclose(loss, ce + 0.5)


def test_training_learns_separable_clusters():
    pl.seed_everything(0, verbose=False)
    dm = Synthetic(in_features=8, num_classes=3, n_train=300, n_test=100, val_size=0.1, batch_size=32)
    module = ClassifierModule(
        FCL(8, 3, hidden=[16]), num_classes=3, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2)
    )
    trainer = pl.Trainer(
        max_epochs=5, logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=dm)
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert result["test/acc"] > 0.95


def test_scheduler_is_stepped_once_per_epoch():
    """Cosine over T_max = 4 epochs from lr 0.1: after 2 epochs lr = 0.1 * (1 + cos(pi / 2)) / 2 = 0.05."""
    from functools import partial

    pl.seed_everything(0, verbose=False)
    dm = Synthetic(in_features=8, num_classes=3, n_train=300, n_test=100, val_size=0.1, batch_size=32)
    module = ClassifierModule(
        FCL(8, 3, hidden=[16]),
        num_classes=3,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4),
    )
    trainer = pl.Trainer(
        max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)
    assert trainer.lr_scheduler_configs[0].interval == "epoch"
