"""The one LightningModule: trains any ModelOutput model, adds auxiliary losses to the task loss."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST, search_runs
from torch import nn

from ssmoe_cli.data.synthetic import Synthetic
from ssmoe_cli.models.base import ModelOutput
from ssmoe_cli.models.fcl import FCL
from ssmoe_cli.module import ClassifierModule

QUIET = {"logger": False, "enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False}


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
    trainer = pl.Trainer(max_epochs=5, **QUIET)
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
    trainer = pl.Trainer(max_epochs=2, **QUIET)
    trainer.fit(module, datamodule=dm)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)
    assert trainer.lr_scheduler_configs[0].interval == "epoch"


class Recorder(pl.loggers.logger.Logger):
    """Every (step, metrics) Lightning hands a logger."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    name, version = "recorder", "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_training_losses_are_logged_once_per_epoch_as_the_epochs_mean():
    """With lr = 0 the weights never move, so the epoch's train/loss (batch losses weighted by batch size:
    7 batches of 32 and one of 26) must equal the loss of the whole training set at once, and the auxiliary
    loss its constant value. One record per epoch: nothing is logged per step."""
    pl.seed_everything(0, verbose=False)
    dm = Synthetic(in_features=8, num_classes=3, n_train=280, n_test=50, val_size=30, batch_size=32)
    module = ClassifierModule(WithAux(), num_classes=3, optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        logger=recorder,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    x, y = dm.train_set.tensors
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(module.model(x).logits, y).item() + 0.5
    train = [(step, m) for step, m in recorder.records if "train/loss" in m]
    assert [step for step, _ in train] == [7, 15]  # the last step of each epoch (Lightning counts from 0)
    for _, metrics in train:
        assert metrics["train/loss"] == pytest.approx(expected, rel=1e-5)
        assert metrics["train/aux/penalty"] == pytest.approx(0.5)
    assert sum("train/loss" in m for _, m in recorder.records) == 2


def test_progress_bar_updates_at_its_rate_and_always_on_an_epochs_last_batch(monkeypatch):
    """At most refresh_rate updates a second: with the bar's clock stopped, it updates on the first batch,
    then only on each epoch's last (so it ends at the total), never on the batches in between."""
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import RichProgressBar

    from ssmoe_cli import callbacks
    from ssmoe_cli.callbacks import ThrottledRichProgressBar

    updated: list[int] = []
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", lambda self, *args: updated.append(args[-1]))
    monkeypatch.setattr(callbacks, "time", SimpleNamespace(monotonic=lambda: 100.0, perf_counter=lambda: 0.0))
    pl.seed_everything(0, verbose=False)
    dm = Synthetic(in_features=8, num_classes=3, n_train=330, n_test=50, val_size=10, batch_size=32)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=[ThrottledRichProgressBar(refresh_rate=10)],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(ClassifierModule(FCL(8, 3, hidden=[8]), num_classes=3), datamodule=dm)
    assert updated == [0, 9, 9]  # 10 batches an epoch


@pytest.mark.slow
def test_cli_run_logs_each_training_loss_once_per_epoch_with_the_progress_bar_on(run_cli, tmp_path, mlflow_db):
    """Through `ssmoe train` with the default progress bar (trainer=debug switches it off): train/loss
    and val/acc reach MLflow once per epoch, at increasing steps."""
    import mlflow

    run_cli(
        "train",
        "model=fcl",
        "data=digits",
        "threads=1",
        *FAST,
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=true",
    )
    (run_id,) = search_runs(tmp_path)["run_id"]
    client = mlflow.MlflowClient()
    for name in ("train/loss", "val/acc"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert len(steps) == 2 and steps[0] < steps[1], (name, steps)


def _fit_cosine(tmp_path, max_epochs: int, ckpt_path=None, **trainer_kwargs) -> tuple[ClassifierModule, pl.Trainer]:
    from functools import partial

    pl.seed_everything(0, verbose=False)
    dm = Synthetic(in_features=8, num_classes=3, n_train=300, n_test=100, val_size=0.1, batch_size=32)
    module = ClassifierModule(
        FCL(8, 3, hidden=[16]),
        num_classes=3,
        optimizer=lambda params: torch.optim.Adam(params, lr=0.05),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4),
    )
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module, trainer


def test_manual_step_takes_the_automatic_paths_updates_and_resumes_alike(tmp_path):
    """ssmoe steps the optimizer itself (manual optimization) unless the trainer clips or accumulates
    gradients; a clip that never bites (by value, at 1e9) forces Lightning's automatic path. Both give the
    same weights and learning rate after 3 epochs of Adam under a cosine schedule, and so does a run of 2
    epochs resumed from its checkpoint for the third."""
    manual, trainer = _fit_cosine(tmp_path / "a", 3)
    assert not manual.automatic_optimization
    auto, auto_trainer = _fit_cosine(tmp_path / "b", 3, gradient_clip_val=1e9, gradient_clip_algorithm="value")
    assert auto.automatic_optimization
    _fit_cosine(tmp_path / "c", 2)
    resumed, resumed_trainer = _fit_cosine(tmp_path / "d", 3, ckpt_path=tmp_path / "c" / "last.ckpt")
    lr = 0.05 * (1 + math.cos(math.pi * 3 / 4)) / 2
    for t in (trainer, auto_trainer, resumed_trainer):
        assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr)
        assert t.global_step == 3 * 9  # 270 samples in batches of 32
    for other in (auto, resumed):
        for a, b in zip(manual.model.parameters(), other.model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_an_optimizer_that_steps_with_a_closure_trains_on_the_automatic_path():
    """LBFGS re-evaluates the loss through a closure; only Lightning's automatic path re-runs the
    training step for it, so ClassifierModule takes that path for it and still learns."""
    from functools import partial

    pl.seed_everything(0, verbose=False)
    dm = Synthetic(in_features=8, num_classes=3, n_train=300, n_test=100, val_size=0.1, batch_size=64)
    module = ClassifierModule(FCL(8, 3, hidden=[16]), num_classes=3, optimizer=partial(torch.optim.LBFGS, lr=0.5))
    trainer = pl.Trainer(max_epochs=2, **QUIET)
    trainer.fit(module, datamodule=dm)
    assert module.automatic_optimization
    assert trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"] > 0.9


@pytest.mark.parametrize("clip", [None, 1e9])  # manual optimization; Lightning's automatic path (clipping)
def test_evaluation_after_fused_steps_runs_on_the_updated_weights(clip):
    """A fused kernel (optim.fused, the default) writes the weights without bumping their version
    counters, on which evaluation's cached masked weights key. Each epoch's validation fills the caches;
    the module must mark the next epoch's steps, or the last evaluation reuses the previous weights."""
    from functools import partial

    from ssmoe_cli.models.gating.noisy_topk import NoisyTopKGate
    from ssmoe_cli.models.moe import MixtureOfExperts
    from ssmoe_cli.models.topology.small_world import SmallWorld

    pl.seed_everything(0, verbose=False)
    dm = Synthetic(in_features=8, num_classes=3, n_train=200, n_test=50, val_size=0.2, batch_size=32)
    topology = SmallWorld(degree=2, rewire_p=0.0, fan_out=2)
    model = MixtureOfExperts(8, 3, NoisyTopKGate(8, 4, 2), topology, num_experts=4, k=2, expert_hidden=[8])
    for layer in (model.layers[0], model.layers[1]):  # masked: the forward pass uses cached products
        layer.set_mask(torch.rand(layer.mask.shape) > 0.3)
    module = ClassifierModule(model, num_classes=3, optimizer=partial(torch.optim.Adam, lr=0.05, fused=True))
    trainer = pl.Trainer(max_epochs=2, gradient_clip_val=clip, **QUIET)
    trainer.fit(module, datamodule=dm)
    assert module.automatic_optimization == (clip is not None)
    x = dm.val_set.tensors[0]
    model.eval()
    with torch.no_grad():
        cached = model(x).logits  # the caches' values, if their keys still match
    fresh = model(x).logits.detach()  # with autograd on nothing cached is used: from the weights
    torch.testing.assert_close(cached, fresh)
