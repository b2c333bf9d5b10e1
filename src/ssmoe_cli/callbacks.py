"""Lightning callbacks of ssmoe that are not pruning methods."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar

from ssmoe_cli import signals
from ssmoe_cli.errors import SsmoeError


class EpochTimer(pl.Callback):
    """Wall time of each training epoch, its validation pass included (time/epoch_s is the mean)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.durations.append(time.perf_counter() - self._start)

    @property
    def mean(self) -> float:
        return sum(self.durations) / len(self.durations) if self.durations else float("nan")


class NonFiniteLossError(SsmoeError):
    """The training loss became NaN or infinite; carries the step for the run's record."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class FiniteLossGuard(pl.Callback):
    """Stop at the first NaN/Inf training loss with a message naming the step and what is kept.

    Checking reads the loss on the host (a device sync on GPU): `every` steps, 1 by default."""

    def __init__(self, every: int = 1) -> None:
        self.every = max(1, every)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx % self.every:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach())
        if math.isfinite(value):
            return
        ckpt = next(
            (
                Path(cb.dirpath) / "last.ckpt"
                for cb in trainer.checkpoint_callbacks
                if getattr(cb, "dirpath", None) and (Path(cb.dirpath) / "last.ckpt").is_file()
            ),
            None,
        )
        kept = f"last good checkpoint: {ckpt}" if ckpt else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"training loss became {value} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"{kept}. Lower optim.lr or check the data",
            step=trainer.global_step,
        )


class RngState(pl.Callback):
    """Saves torch's global RNG state in every checkpoint and restores it on resume, so that a resumed
    run draws the same random numbers (e.g. the noisy top-k gate's noise) as an uninterrupted one."""

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, writing the run folder's checkpoints/last.ckpt (conf/callbacks).

    Every run writes into its own output folder, a resumed one too, so the checkpoint it resumes
    from was written elsewhere. Lightning then warns that "the dirpath has changed" and does not
    restore its best / top-k bookkeeping of that folder; ssmoe keeps one file and monitors no metric,
    so there is nothing to restore, and the file resumed from is kept (Lightning never deletes the
    checkpoint a run resumed from). The warning would only alarm: it is left out, nothing else changes.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The dirpath has changed")
            super().load_state_dict(state_dict)


class StopOnSigterm(pl.Callback):
    """A SIGTERM that arrived after `trainer.fit` was called but before Lightning installed its own
    handler is sent again once Lightning listens, so that training stops at the first batch boundary
    instead of running to the end (see ssmoe_cli.signals)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        signals.redeliver_if_received()


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's RichProgressBar, updated at most `refresh_rate` times per second during training.

    Lightning's bar updates its task, reads every metric and asks for a redraw after each training batch,
    whatever `refresh_rate` says (that only paces Rich's redraw thread): 2% of the dense FCL's training
    loop on CPU with the output in a pipe, more at a terminal where Rich draws. Between updates it lags; an
    epoch's last batch and its end always update it, so it never stops short of the total.
    """

    def __init__(self, refresh_rate: int = 10, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._next_update = 0.0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if now < self._next_update and batch_idx + 1 < self.total_train_batches:
            return
        self._next_update = now + 1.0 / max(self.refresh_rate, 1e-9)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
