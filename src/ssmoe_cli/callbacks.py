"""Lightning callbacks of ssmoe that are not pruning methods."""

from __future__ import annotations

import time

import pytorch_lightning as pl


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
